"""One colour per axis value, stable across figures, calls and reports."""

from reports.palette import CYCLE, KNOWN, Palette, colour, value_key


def test_known_values_have_fixed_colours():
    assert colour("modeling", "ar") == "#ff7f0e"
    assert colour("modeling", "mlm") == "#1f77b4"
    assert colour("size", "XL") == KNOWN[("size", "XL")] == "#e31a1c"


def test_a_value_keeps_its_colour_whatever_else_exists_or_the_order_asked():
    first = Palette({"cfg_schedule": ["linear", "cosine"], "token_each": [1, 2, 4], "code_dim": [16, 20]})
    second = Palette({"token_each": [4, 2, 1, 8], "cfg_schedule": ["cosine", "linear", "square"], "code_dim": [20, 16, 24]})
    for axis, value in (("cfg_schedule", "linear"), ("token_each", 2), ("token_each", 4), ("code_dim", 20)):
        assert first(axis, value) == second(axis, value) == colour(axis, value)
    assert [colour("token_each", k) for k in (1, 2, 4)] == ["#ff7f0e", "#2ca02c", "#9467bd"]  # CYCLE[K]
    assert colour("top_k", 100) == "#e6550d"  # sha256, not the salted hash(): the same in every process


def test_numbers_are_one_value_whatever_their_type():
    import numpy as np

    assert value_key(2) == value_key(2.0) == value_key(np.float64(2.0)) == "2"
    assert colour("cfg_scale", 2) == colour("cfg_scale", np.float32(2.0))


def test_hash_collisions_inside_one_axis_get_distinct_colours():
    values = [f"v{i}" for i in range(12)]
    assert len({colour("subject", v) for v in values}) < 12  # hashing alone collides here
    palette = Palette({"subject": values})
    colours = [palette("subject", v) for v in values]
    assert len(set(colours)) == 12 and set(colours) <= set(CYCLE)
