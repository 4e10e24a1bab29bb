"""How the measured table becomes auto's quality bands."""

from model.codec_bands import QUALITIES, bands


def table(winner_by_quality, codec: str = "jpeg") -> dict[str, dict[int, float]]:
    names = {"fast", "low", "mid", "high"}
    return {n: {q: 1.0 if winner_by_quality(q) == n else 0.0 for q in QUALITIES[codec]} for n in names}


def test_each_model_gets_the_qualities_it_wins_with_edges_halfway_between_measurements():
    def winner(q):
        return "low" if q <= 35 else "mid" if q <= 60 else "high" if q <= 92 else "fast"

    assert bands(table(winner), clean="fast") == {"low": [1, 37], "mid": [38, 62], "high": [63, 93]}


def test_qualities_the_clean_model_wins_belong_to_no_band():
    assert bands(table(lambda q: "fast"), clean="fast") == {}


def test_edges_lie_between_the_qualities_the_service_reads_back_not_those_the_encoder_was_given():
    def winner(q):
        return "low" if q <= 40 else "mid" if q <= 70 else "fast"

    read = {q: min(100, q + 2) for q in QUALITIES["webp"]}  # an estimate two points above the encoder's quality
    assert bands(table(winner, "webp"), clean="fast", read=read) == {"low": [1, 44], "mid": [45, 74]}
