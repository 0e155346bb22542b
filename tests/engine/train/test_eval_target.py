from types import SimpleNamespace

import torch

from engine.train.trainer import eval_target


def test_masked_eval_composites_outside_the_mask():
    img = torch.full((1, 2, 2, 3), 0.3)
    masks = torch.tensor([[[True, False], [False, True]]])
    split = SimpleNamespace(images=img, masks=masks)
    bg = torch.tensor([1.0, 0.0, 0.5])
    plain = eval_target(SimpleNamespace(masked_eval=False), split, 0, bg)
    assert torch.equal(plain, img[0])
    masked = eval_target(SimpleNamespace(masked_eval=True), split, 0, bg)
    assert torch.allclose(masked[0, 0], torch.full((3,), 0.3)) and torch.allclose(masked[0, 1], bg)
    # no masks in the data: the image as it is
    assert torch.equal(eval_target(SimpleNamespace(masked_eval=True), SimpleNamespace(images=img, masks=None), 0, bg),
                       img[0])
