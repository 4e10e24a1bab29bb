"""How the measured table becomes auto's JPEG bands."""

from model.jpeg_bands import QUALITIES, bands


def table(winner_by_quality) -> dict[str, dict[int, float]]:
    names = {"fast", "low", "mid", "high"}
    return {n: {q: 1.0 if winner_by_quality(q) == n else 0.0 for q in QUALITIES} for n in names}


def test_each_jpeg_model_gets_the_qualities_it_wins_with_edges_halfway_between_measurements():
    def winner(q):
        return "low" if q <= 35 else "mid" if q <= 60 else "high" if q <= 92 else "fast"

    assert bands(table(winner), clean="fast") == {"low": [1, 37], "mid": [38, 62], "high": [63, 93]}


def test_qualities_the_clean_model_wins_belong_to_no_band():
    assert bands(table(lambda q: "fast"), clean="fast") == {}
