import torch

from medseg.pipeline.augment import augment_sample, elastic_transform, histogram_match, intensity_quantiles


def test_augmented_sample_keeps_shapes_and_label_values():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 16, 16, 16)
    label = torch.zeros(16, 16, 16, dtype=torch.long)
    label[4:12, 4:12, 4:12] = 2
    refs = [intensity_quantiles(torch.randn(1, 8, 8, 8) * 3 + 1)]
    for _ in range(20):
        img, lab = augment_sample(image, label, gen, refs)
        assert img.shape == image.shape and lab.shape == label.shape
        assert set(lab.unique().tolist()) <= {0, 2}
        assert torch.isfinite(img).all()


def test_elastic_moves_image_and_label_together():
    gen = torch.Generator().manual_seed(1)
    label = torch.zeros(24, 24, 24, dtype=torch.long)
    label[6:18, 6:18, 6:18] = 1
    image = label[None].float()
    img, lab = elastic_transform(image, label, gen, p=1.0, max_vox=3.0)
    assert not torch.equal(lab, label)  # it did deform
    agree = ((img[0] > 0.5).long() == lab).float().mean()
    assert agree > 0.98


def test_histogram_matching_maps_onto_reference_distribution():
    x = torch.rand(1, 10, 10, 10)
    reference = intensity_quantiles(torch.randn(20, 20, 20) * 5 + 100)
    y = histogram_match(x, reference)
    assert abs(float(y.mean()) - 100) < 1.0
    # Monotone: the order of voxels is kept.
    order_y = y.flatten().argsort()
    assert (x.flatten()[order_y].diff() >= -1e-6).all()
