import numpy as np
import torch

from scaleprotoseg.metrics.segmentation import confusion_matrix, iou_from_confusion, summarise


def test_confusion_matrix_by_hand():
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    cm = confusion_matrix(pred, gt, 3)
    # rows = ground truth, cols = prediction; the void pixel (predicted 2) is dropped entirely
    expected = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 1]])
    assert np.array_equal(cm.numpy(), expected)
    iou, miou = iou_from_confusion(cm)
    # IoU_c = TP / (row + col - TP): 1/(2+2-1), 2/(3+3-2), 1/(2+2-1)
    assert np.allclose(iou, [100 / 3, 50.0, 100 / 3])
    assert np.isclose(miou, (100 / 3 + 50 + 100 / 3) / 3)


def test_classes_with_empty_union_are_skipped():
    gt = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 0, 1])
    iou, miou = iou_from_confusion(confusion_matrix(pred, gt, 4))
    assert np.isnan(iou[2]) and np.isnan(iou[3]) and miou == 100.0


def test_dataset_level_accumulation_differs_from_per_image_mean():
    # image A: class 1 tiny and missed; image B: class 1 large and right. Dataset IoU weighs pixels.
    a_gt, a_pred = torch.tensor([1, 0, 0, 0]), torch.tensor([0, 0, 0, 0])
    b_gt, b_pred = torch.ones(12, dtype=torch.long), torch.ones(12, dtype=torch.long)
    cm = confusion_matrix(a_pred, a_gt, 2) + confusion_matrix(b_pred, b_gt, 2)
    iou, _ = iou_from_confusion(cm)
    assert np.isclose(iou[1], 100 * 12 / 13)


def test_summary_names_classes():
    cm = np.array([[3, 1], [0, 4]])
    s = summarise(cm, ["bg", "fg"])
    assert set(s["iou"]) == {"bg", "fg"} and np.isclose(s["miou"], (75 + 80) / 2) and np.isclose(s["pixel_accuracy"], 87.5)


def test_confusion_matrix_of_uint8_labels_past_255_cells():
    # 150 classes: target 100 · 150 + prediction would wrap in uint8; counted by hand instead.
    K = 150
    target = torch.tensor([[100, 149, 255], [3, 100, 0]], dtype=torch.uint8)
    pred = torch.tensor([[100, 2, 7], [3, 120, 149]], dtype=torch.uint8)
    cm = confusion_matrix(pred, target, K)
    expected = torch.zeros(K, K, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            expected[t, p] += 1
    assert torch.equal(cm, expected) and cm.sum() == 5
