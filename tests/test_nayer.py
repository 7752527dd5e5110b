"""NAYER (Tran et al., CVPR 2024): label embeddings, the noisy layer, generator renewal and the warm-up."""
import pytest
import torch

from dfkd.errors import DfkdError
from dfkd.synthesizers.nayer import load_label_embeddings
from tests.helpers import agreeing_student, build_tiny, decision_adversarial_by_hand


def test_nayer_noisy_layer_maps_one_label_to_a_new_code_per_chunk_and_per_call():
    syn, *_ = build_tiny("nayer", batch_size=8)
    targets = syn.balanced_targets()
    assert targets[:4].tolist() == [0, 1, 2, 3] and targets[4:].tolist() == [0, 1, 2, 3]
    w, b = syn.noisy_layers(8)
    assert w.shape == (2, 4, 8) and b.shape == (2, 8)
    g = syn.generator.eval()
    x = g(targets, w, b)
    assert not torch.allclose(x[0], x[4]), "the same class in two chunks gets two codes"
    w2, b2 = syn.noisy_layers(8)
    assert not torch.equal(w, w2)


def test_nayer_generator_renewal_is_identical_on_every_rank_and_leaves_the_global_rng():
    a, *_ = build_tiny("nayer", rank=0)
    b, *_ = build_tiny("nayer", rank=1)
    for s in (a, b):
        s.synthesize()
        s.calls = 6
    state = torch.random.get_rng_state()
    a.renew_generator()
    assert torch.equal(state, torch.random.get_rng_state())
    b.renew_generator()
    assert all(torch.equal(p, q) for p, q in zip(a.generator.state_dict().values(), b.generator.state_dict().values()))
    assert not a.opt.state


def test_nayer_label_embeddings_default_to_one_hot_and_load_from_a_file(tmp_path):
    assert torch.equal(load_label_embeddings(None, 3), torch.eye(3))
    emb = torch.randn(4, 16)
    torch.save(emb, tmp_path / "emb.pt")
    syn, *_ = build_tiny("nayer", label_embeddings=str(tmp_path / "emb.pt"))
    assert torch.equal(syn.generator.embeddings, emb) and syn.synthesize().images.shape[1:] == (1, 12, 12)
    torch.save(torch.randn(5, 16), tmp_path / "bad.pt")
    with pytest.raises(DfkdError, match=r"\[4, dim\]"):
        load_label_embeddings(str(tmp_path / "bad.pt"), 4)
    with pytest.raises(DfkdError, match="no such file"):
        load_label_embeddings(str(tmp_path / "nope.pt"), 4)


def test_nayer_adversarial_term_starts_after_warm_up():
    syn, *_ = build_tiny("nayer", adversarial_after=1)
    assert "adv" not in syn.synthesize().losses
    assert "adv" in syn.synthesize().losses


def test_nayer_adversarial_term_is_the_decision_adversarial_loss_by_hand():
    """Fails on: the sign of the adversarial term flipped, or teacher and student swapped in it."""
    syn, teacher, _ = build_tiny("nayer", augment=[])
    student = agreeing_student(teacher).eval()
    x = torch.rand(8, 1, 12, 12)
    terms = syn.loss_terms(x, torch.randint(4, (8,)), student)
    s_logits, t_logits = student(x), teacher(x)
    assert (s_logits.argmax(1) == t_logits.argmax(1)).any()  # the term acts where the two agree
    torch.testing.assert_close(terms["adv"], decision_adversarial_by_hand(s_logits, t_logits), rtol=1e-5, atol=1e-7)
