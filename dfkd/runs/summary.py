"""What a finished run says: the accuracies on the tuning and reporting splits, the splits' roles recorded in
summary.json, and the report printed at the end."""
from __future__ import annotations

from dfkd.data import SCORED_SPLITS
from dfkd.models.evaluate import evaluate


def score(model, splits, device="cpu") -> dict[str, float]:
    """Top-1 accuracy on the tuning and the reporting split."""
    return {split: evaluate(model, getattr(splits, split), device=device) for split in SCORED_SPLITS}


def split_roles(cfg, splits) -> dict:
    """The three splits of summary.json: how many images each holds and what it is used for."""
    n = splits.sizes()
    return {"data": cfg.data.name,
            "train": {"images": n["train"], "role": "the teacher's training images; no distillation trains on them"},
            "tune": {"images": n["tune"], "role": "drawn from train: best.ckpt, the chance guard, the teacher check "
                                                  "and recipe settings; never reported"},
            "report": {"images": n["report"], "role": "held out: every reported figure (report_acc); never used "
                                                      "for a choice"}}


def splits_line(roles: dict) -> str:
    return (f"{roles['data']}: train {roles['train']['images']:,}, tune {roles['tune']['images']:,} (of train), "
            f"report {roles['report']['images']:,} (held out)")


def report(s: dict, run_dir) -> str:
    t, st = s["teacher"], s["student"]
    t_acc = f"{t['report_acc']:.4f}" if t["report_acc"] is not None else "not checked"
    t_what = f"{t['params']:,} params" if t["params"] else f"black box, {t['access']} only"
    smaller = f", {s['compression_ratio']:.1f}x smaller" if s["compression_ratio"] else ""
    queries = (f"teacher queries       {s['queries']:,}" + (f" of {s['max_queries']:,}" if s["max_queries"] else "")
               + (" (budget spent)" if s["stopped_by_query_budget"] else "")
               + f"; {s['queries_teacher_check']:,} more to score it\n") if "queries" in s else ""
    return (f"\n== {s['recipe']} -> {run_dir}\n"
            f"teacher report acc    {t_acc}  ({t['arch']}, {t_what})\n"
            f"student report acc    {st['report_acc']:.4f}  ({st['arch']}, {st['params']:,} params{smaller}; "
            f"{st['tune_acc']:.4f} on the tuning split)\n"
            f"splits                {splits_line(s['splits'])}\n"
            f"images synthesized    {s['images_synthesized']:,} in {s['synthesis_time_s']:.0f} s of synthesis\n"
            + queries +
            f"wall time             {s['wall_time_s']:.0f} s ({s['iterations']} iterations"
            f"{', stopped by the time budget' if s.get('stopped_by_budget') else ''})\n"
            + (f"WARNING               the student is at chance level: it learned nothing usable"
               f"{' in the time budget; raise trainer.max_minutes' if s.get('stopped_by_budget') else ''}\n"
               if s["student"].get("at_chance") else "") +
            f"summary               {run_dir / 'summary.json'}\n"
            f"exported student      {s['exported_student']}  (dfkd.load_student(path))\n")
