"""What the generator-based synthesizers (DAFL, DFAD, ZSKT) share: one `UpsampleGenerator` with its Adam
optimizer (owned and checkpointed by Lightning, gradients synchronized across DDP ranks through
`ctx.backward` = `manual_backward`), latent sampling from the per-rank RNG, and the generator step. Scoring with
the student in eval mode with frozen parameters is the base class's `scoring_student()`."""
from __future__ import annotations

import torch

from dfkd.models.generators import UpsampleGenerator
from dfkd.synthesizers.base import Synthesizer


class GeneratorSynthesizer(Synthesizer):
    bounded_images = False  # the BN-headed generators of DAFL/DFAD/ZSKT emit normalized images that may overshoot
    def __init__(self, batch_size: int, nz: int = 100, ngf: int = 64, head: str = "tanh_bn", bn_eps: float = 1e-5,
                 lr: float = 1e-3, betas=(0.5, 0.999), grad_clip: float | None = None,
                 cosine_steps: int | None = None, fresh_samples: bool = False, **data):
        super().__init__(batch_size, **data)
        c, h, w = self.image_shape
        self.nz, self.grad_clip, self.fresh_samples = int(nz), grad_clip, bool(fresh_samples)
        self.generator = UpsampleGenerator(nz, ngf, h, c, head, bn_eps)
        self.bounded_images = head == "sigmoid"
        self.opt = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=tuple(betas))
        self.sched = (torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=int(cosine_steps))
                      if cosine_steps else None)

    def optimizers(self) -> list[dict]:
        return [{"optimizer": self.opt, "scheduler": self.sched, "grad_clip": self.grad_clip}]

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """[0,1]-space images from latents (the generator stays in train mode: batch statistics, as the papers)."""
        self.generator.train()
        return self.unit(self.generator(z))

    def latents(self, n: int) -> torch.Tensor:
        return self.randn(n, self.nz)

    def generator_step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.ctx.backward(loss)
        self.ctx.step(self.opt)  # clips to `grad_clip` (declared in optimizers()) after fp16 unscaling
        if self.sched is not None:
            self.sched.step()

    def sample(self, n: int) -> torch.Tensor | None:
        if not self.fresh_samples:
            return None
        with torch.no_grad():
            return self.generate(self.latents(n))

    @staticmethod
    def disagreement(s_logits: torch.Tensor, t_logits: torch.Tensor) -> float:
        return float((s_logits.argmax(1) != t_logits.argmax(1)).float().mean())
