"""scripts/calibrate_decoy.py: Ross et al.'s MLP and training loop as the module docstring describes them
(chapter 9, sec-decoy-calibration), on small synthetic data where a corner patch names the label."""

import torch
from _scripts import load_script


def _script():
    return load_script("calibrate_decoy")


def _shortcut_data(n=1024, seed=0):
    """Noise images whose top-left 4 × 4 patch holds 255 − 25·y, the only signal of the label; mask = the patch."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 30, (n, 1, 28, 28), generator=g).to(torch.uint8)
    x[:, 0, :4, :4] = (255 - 25 * y).to(torch.uint8)[:, None, None]
    masks = torch.zeros(n, 28, 28, dtype=torch.bool)
    masks[:, :4, :4] = True
    return x, y, masks


def test_mlp_shape_and_init():
    s = _script()
    torch.manual_seed(0)
    m = s.RossMLP()
    assert [tuple(lin.weight.shape) for lin in m.linears] == [(50, 784), (30, 50), (10, 30)]
    w = torch.cat([p.flatten() for p in m.parameters()])
    assert abs(float(w.std()) - 0.1) < 0.01 and abs(float(w.mean())) < 0.01   # N(0, 0.1²)
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_without_penalty_the_shortcut_is_learnt_and_the_penalty_removes_it():
    s = _script()
    x, y, masks = _shortcut_data()
    x_new, y_new, _ = _shortcut_data(512, seed=1)               # unseen noise, same rule
    plain = s.train(x, y, masks, lam=0.0, seed=0, epochs=30)
    assert s.accuracy(plain, x_new, y_new) > 0.4               # the patch is read (chance: 0.1)
    guarded = s.train(x, y, masks, lam=1000.0, seed=0, epochs=30)
    xt = x_new[:64].float().requires_grad_(True)
    grads = {}
    for name, model in (("plain", plain), ("guarded", guarded)):
        logp = torch.log_softmax(model(xt), 1).sum()
        g, = torch.autograd.grad(logp, xt)
        grads[name] = float(g[:, 0, :4, :4].pow(2).mean())
    assert grads["guarded"] < 0.25 * grads["plain"]          # the input gradient inside the patch falls
    assert s.accuracy(guarded, x_new, y_new) < 0.2             # nothing else to learn from: noise


def test_main_writes_one_record_and_never_overwrites(tmp_path, monkeypatch):
    s = _script()
    x, y, _ = _shortcut_data(200)
    monkeypatch.setattr(s, "load_split", lambda name, train, root=None, n=None, seed=0: (x, y))
    path = s.main(["--seeds", "0", "--epochs", "1", "--out", str(tmp_path)])
    import json
    rec = json.loads(path.read_text())
    assert rec["kind"] == "calibration-decoy" and len(rec["runs"]) == 2
    assert set(rec["summary"]) == {"no annotations", "input-gradient penalty"}
    for r in rec["runs"]:
        assert abs(r["consistent_accuracy"] - r["random_accuracy"] - r["reliance"]) < 1e-12
