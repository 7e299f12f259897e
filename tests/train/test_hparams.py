from tunehouse.config import TrainConfig
from tunehouse.train.hparams import BASE_LR_FULL, auto_batch_size, auto_epochs, lr_at, resolve


def test_auto_epochs_follows_openai_rule():
    assert [auto_epochs(n) for n in (1, 10, 33, 34, 200, 8333, 8334, 30000)] == \
        [25, 10, 3, 3, 3, 3, 2, 1]


def test_auto_batch_size_bounds():
    assert auto_batch_size(3) == 3
    assert auto_batch_size(200) == 8
    assert auto_batch_size(50_000) == 128
    assert auto_batch_size(10_000_000) == 256


def test_resolve_records_concrete_values():
    hp = resolve(TrainConfig(train_file="x", full=True, learning_rate_multiplier=2.0),
                 n_examples=200, context_length=8192)
    assert hp.n_epochs == 3 and hp.batch_size == 8 and hp.steps_per_epoch == 25
    assert hp.total_steps == 75 and hp.learning_rate == 2 * BASE_LR_FULL
    assert hp.max_length == 2048 and hp.save_every == 25


def test_resolve_respects_explicit_values_and_max_steps():
    hp = resolve(TrainConfig(train_file="x", epochs=5, batch_size=64, max_steps=3, max_length=128),
                 n_examples=10, context_length=512)
    assert hp.batch_size == 10 and hp.total_steps == 3 and hp.max_length == 128


def test_lr_schedule_warms_up_and_decays():
    lrs = [lr_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[0] < lrs[9] == 1.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert abs(lrs[-1] - 0.11) < 0.02
