import pytest

from unigap.model.judge import answer, parse_answer, question


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The score is 1", True),
        ("The score is 0", False),
        ("the score is: 1.", True),
        ("The score is {0}", False),
        ("After looking closely, the score is 1 because ...", True),
        ("Yes, it does.", True),
        ("no", False),
        ("  No. The image shows a square.", False),
        ("It shows a red circle", None),
        ("The score is 7", None),
        ("", None),
        ("yesterday", None),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text) is expected


def test_question_follows_the_paper_template():
    q = question("a red circle")
    assert "Does this image describe a red circle?" in q
    assert "score 1" in q and "score 0" in q
    assert q.endswith("The score is {your score}.")
    assert parse_answer(answer(True)) is True and parse_answer(answer(False)) is False
