"""dfkd: data-free knowledge distillation. Plug-in synthesizers (DeepInversion, ...) feed one shared
teacher -> student loop (PyTorch Lightning, multi-GPU). See README.md."""
__version__ = "0.1.0"


def load_student(path):
    """Rebuild an exported student (`checkpoints/<run>/student.pt`): eval-mode module, [0,1] images in, logits out."""
    from dfkd.runs.export import load_student as _load

    return _load(path)


__all__ = ["load_student", "__version__"]
