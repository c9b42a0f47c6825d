import numpy as np
import pyarrow as pa
import torch

from mmdistill.embed.alignment import recall_at, retrieval, train_heads
from mmdistill.selection.coresets import forgetting_order
from mmdistill.selection.forgetting import ForgettingCounter

torch.set_num_threads(1)


def test_recall_counts_rank_of_true_partner():
    similarity = np.array([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.3, 0.4, 0.2]])
    # row 0: true partner first; row 1: second; row 2: third
    assert recall_at(similarity, (1, 2, 3)) == {"R@1": 33.33, "R@2": 66.67, "R@3": 100.0}
    assert recall_at(np.ones((3, 3)), (1, 2, 3)) == {"R@1": 0.0, "R@2": 0.0, "R@3": 100.0}  # ties never hit


def test_heads_learn_a_joint_space_for_two_unrelated_encoders():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(600, 8))  # what both modalities describe
    image = latent @ rng.normal(size=(8, 40)) + 0.1 * rng.normal(size=(600, 40))
    text = np.tanh(latent @ rng.normal(size=(8, 24))) + 0.1 * rng.normal(size=(600, 24))
    image, text = (torch.tensor(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=torch.float32)
                   for x in (image, text))
    heads, history = train_heads(image[:500], text[:500], dim=16, epochs=30, batch_size=100, lr=0.01, seed=0)
    assert history[-1] < 0.5 * history[0]
    with torch.no_grad():
        val = retrieval(heads.project_image(image[500:]).numpy(), heads.project_text(text[500:]).numpy())
    assert val["image_to_text"]["R@10"] > 50 and val["text_to_image"]["R@10"] > 50  # chance: 10%
    again, _ = train_heads(image[:500], text[:500], dim=16, epochs=30, batch_size=100, lr=0.01, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(heads.state_dict().values(), again.state_dict().values()))


def test_mismatched_pairs_are_the_most_forgotten():
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(400, 8))
    image = latent @ rng.normal(size=(8, 40)) + 0.1 * rng.normal(size=(400, 40))
    text = latent @ rng.normal(size=(8, 24)) + 0.1 * rng.normal(size=(400, 24))
    text[:20] = text[rng.permutation(np.arange(200, 400))[:20]]  # 20 pairs whose caption belongs elsewhere
    image, text = (torch.tensor(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=torch.float32)
                   for x in (image, text))
    counter = ForgettingCounter(400)
    train_heads(image, text, dim=16, epochs=20, batch_size=100, lr=0.01, seed=0, counter=counter)
    events = pa.table({"uid": [f"{i:03d}" for i in range(400)], "forgetting_events": counter.events,
                       "learned": counter.learned, "misclassified": counter.misclassified})
    top = forgetting_order(events, "most")[:20]
    assert (top < 20).sum() >= 15
