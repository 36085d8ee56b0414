"""Which epoch best.pth holds: a higher validation top-1 wins, and a tie on top-1 goes to the lower loss."""
from engine.state import improves_on_best


def _history(*rows):
    return [{"epoch": e, "val_top1": t, "val_loss": l} for e, (t, l) in enumerate(rows)]


def test_a_higher_top1_wins_whatever_the_loss():
    history = _history((90.0, 0.30))
    assert improves_on_best(91.0, 0.90, best_top1=90.0, best_epoch=0, history=history)
    assert not improves_on_best(89.0, 0.01, best_top1=90.0, best_epoch=0, history=history)


def test_a_tie_on_top1_goes_to_the_lower_validation_loss():
    history = _history((80.0, 0.50), (95.0, 0.40), (92.0, 0.20))
    assert improves_on_best(95.0, 0.35, best_top1=95.0, best_epoch=1, history=history)
    assert not improves_on_best(95.0, 0.40, best_top1=95.0, best_epoch=1, history=history)  # equal: keep
    assert not improves_on_best(95.0, 0.45, best_top1=95.0, best_epoch=1, history=history)


def test_the_first_validated_epoch_is_best():
    assert improves_on_best(10.0, 9.0, best_top1=-1.0, best_epoch=None, history=[])


def test_a_history_without_the_best_epochs_row_keeps_the_strict_rule():
    # a checkpoint saved before best_epoch was recorded: no loss to break the tie with
    assert not improves_on_best(95.0, 0.01, best_top1=95.0, best_epoch=None, history=_history((95.0, 0.4)))


def test_a_run_picks_the_epoch_the_rule_picks():
    """Replaying a whole history: best.pth holds the lowest-loss epoch among those at the top-1 maximum."""
    rows = [(50.0, 2.0), (97.0, 0.30), (99.0, 0.25), (98.0, 0.10), (99.0, 0.20), (99.0, 0.22), (99.0, 0.15)]
    best_top1, best_epoch, history = -1.0, None, []
    for epoch, (top1, loss) in enumerate(rows):
        if improves_on_best(top1, loss, best_top1=best_top1, best_epoch=best_epoch, history=history):
            best_top1, best_epoch = top1, epoch
        history.append({"epoch": epoch, "val_top1": top1, "val_loss": loss})
    assert (best_top1, best_epoch) == (99.0, 6)
