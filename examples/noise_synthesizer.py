"""A complete synthesizer plug-in, registered from outside the dfkd package (docs/adding_a_synthesizer.md).

"KD on noise": the baseline every DFKD paper beats (DAFL Table 1: 'noise'). Images are smoothed uniform
noise; nothing is optimized, so it has no optimizers and no state beyond the base class's RNG.
"""
import torch
import torch.nn.functional as F

from dfkd.synthesizers import SYNTHESIZERS, SynthBatch, Synthesizer


@SYNTHESIZERS.register("noise")
class NoiseSynthesizer(Synthesizer):
    test_settings = {"batch_size": 8}  # the smallest settings: the contract tests build it with these

    def __init__(self, batch_size: int = 64, blur: int = 3, **data):
        super().__init__(batch_size, **data)
        self.blur = int(blur)

    def synthesize(self) -> SynthBatch:
        c, h, w = self.ctx.image_shape
        x = torch.rand(self.batch_size, c, h, w, generator=self.rng, device=self.rng.device).to(self.ctx.device)
        if self.blur > 1:  # low-pass: closer to natural image statistics than white noise
            x = F.avg_pool2d(x, self.blur, stride=1, padding=self.blur // 2, count_include_pad=False)
        with torch.no_grad():
            confidence = self.teacher(x).softmax(1).max(1).values.mean()
        return SynthBatch(images=x, losses={"teacher_confidence": float(confidence)})
