import json
import logging
import shutil
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from unip2.eval import caption_metrics, load_coco_caption_references, simple_tokenize

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

# Lower-case words ending in " .": the PTB and the simple tokenizer split these identically.
PLAIN_REFERENCES = {
    1: ["a man riding a wave on top of a surfboard .", "a surfer rides a large wave in the ocean ."],
    2: ["two dogs play with a ball in the grass .", "a pair of dogs chasing a ball on a lawn ."],
    3: ["a plate of food with broccoli and rice .", "a white plate topped with rice and vegetables ."],
    4: ["a red bus driving down a city street .", "a double decker bus on a busy road ."],
}
PLAIN_PREDICTIONS = {1: "a man riding a wave on a surfboard .", 2: "two dogs playing with a ball .",
                     3: "a plate of rice and broccoli .", 4: "a bus parked on the side of a street ."}


def test_simple_tokenizer():
    assert simple_tokenize("  A Dog's running, FAST!\n") == "a dog s running fast"
    assert simple_tokenize("well-kept lawn.") == "well kept lawn"


def test_simple_path_equals_pycocoevalcap_scorers_on_the_same_tokens():
    predictions = {7: "A man, riding a WAVE!", 8: "Two dogs' ball.", 9: "a bus"}
    references = {7: ["A man rides a wave.", "Surfer on a wave..."], 8: ["Two dogs play with a ball."],
                  9: ["A red bus on the street.", "a bus", "The bus is parked."], 10: ["unused"]}
    metrics = caption_metrics(predictions, references, tokenizer="simple", meteor=False)
    gts = {i: [simple_tokenize(c) for c in references[i]] for i in predictions}
    res = {i: [simple_tokenize(predictions[i])] for i in predictions}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        assert metrics[f"BLEU-{n + 1}"] == pytest.approx(bleu[n])
    assert metrics["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert metrics["ROUGE-L"] == pytest.approx(Rouge().compute_score(gts, res)[0])
    assert metrics["tokenizer"] == "simple" and metrics["meteor_skipped"] is True and metrics["METEOR"] is None
    assert metrics["num_images"] == 3 and "SPICE" not in metrics


def test_missing_java_falls_back_to_simple_tokenizer(monkeypatch, caplog):
    monkeypatch.setenv("PATH", "")  # no java on the PATH
    with caplog.at_level(logging.WARNING, logger="unip2.eval"):
        metrics = caption_metrics(PLAIN_PREDICTIONS, PLAIN_REFERENCES)
    assert metrics["tokenizer"] == "simple" and metrics["meteor_skipped"] is True
    assert "java not found" in caplog.text
    assert set(METRIC_KEYS) <= metrics.keys()


def test_ptb_tokenizer_and_meteor_with_java():
    """The one test that starts Java (PTBTokenizer, then METEOR)."""
    assert shutil.which("java"), "java is part of this project's environment (needed for official scores)"
    metrics = caption_metrics(PLAIN_PREDICTIONS, PLAIN_REFERENCES)
    simple = caption_metrics(PLAIN_PREDICTIONS, PLAIN_REFERENCES, tokenizer="simple", meteor=False)
    assert metrics["tokenizer"] == "ptb" and metrics["meteor_skipped"] is False
    assert 0.1 < metrics["METEOR"] < 1.0
    for key in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert metrics[key] == pytest.approx(simple[key]), key  # same tokens → same scores
    assert 0.3 < metrics["BLEU-1"] < 1.0 and metrics["CIDEr"] > 0.1


def test_identical_captions_score_high():
    references = {i: refs for i, refs in PLAIN_REFERENCES.items()}
    predictions = {i: refs[0] for i, refs in references.items()}
    metrics = caption_metrics(predictions, references, tokenizer="simple", meteor=False)
    assert metrics["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["ROUGE-L"] == pytest.approx(1.0)
    assert metrics["CIDEr"] > 1.0


def test_spice_is_reported_not_downloaded():
    from pycocoevalcap.spice import get_stanford_models as corenlp

    jar = Path(corenlp.SPICEDIR) / corenlp.SPICELIB / f"{corenlp.JAR}.jar"
    metrics = caption_metrics(PLAIN_PREDICTIONS, PLAIN_REFERENCES, tokenizer="simple", meteor=False, spice=True)
    if jar.is_file():  # models fetched beforehand: SPICE runs
        assert metrics["spice_error"] is None and 0.0 <= metrics["SPICE"] <= 1.0
    else:
        assert metrics["SPICE"] is None and "CoreNLP models missing" in metrics["spice_error"]
        assert not jar.is_file()  # nothing was downloaded


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no references"):
        caption_metrics({1: "a cat"}, {2: ["a cat"]}, tokenizer="simple", meteor=False)
    with pytest.raises(ValueError, match="at least one"):
        caption_metrics({}, {1: ["a cat"]}, tokenizer="simple", meteor=False)
    with pytest.raises(ValueError, match="tokenizer"):
        caption_metrics({1: "a cat"}, {1: ["a cat"]}, tokenizer="nltk", meteor=False)


def test_load_coco_caption_references(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": [{"id": 5}, {"id": 6}], "annotations": [
        {"id": 1, "image_id": 5, "caption": "A cat. "}, {"id": 2, "image_id": 6, "caption": "A dog."},
        {"id": 3, "image_id": 5, "caption": "A sleeping cat."}]}))
    assert load_coco_caption_references(path) == {5: ["A cat.", "A sleeping cat."], 6: ["A dog."]}
    assert load_coco_caption_references(path, image_ids=[6]) == {6: ["A dog."]}
    with pytest.raises(ValueError, match="no captions"):
        load_coco_caption_references(path, image_ids=[7])
