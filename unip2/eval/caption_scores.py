"""Caption metrics with pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE on request).

Scores are on pycocoevalcap's scale: fractions, CIDEr around 1.0 for a good model (not ×100). "CIDEr"
is pycocoevalcap's ``Cider``, i.e. CIDEr-D; its document frequencies come from the references of the
evaluated images, so a score on a subset is not comparable with one on the whole split.

Tokenizers:
- "ptb": Stanford's PTBTokenizer (Java), as in the official COCO caption evaluation: lower-cased,
  punctuation tokens dropped, clitics split ("dog's" → "dog 's").
- "simple": lower-case, every punctuation character replaced by a space, split on whitespace. Used,
  with a warning, when ``java`` is not on the PATH; scores are close to but not the official ones.

Cost on 2 CPU cores: the PTB tokenizer ~0.2 s (1.4 s for 5,000 images × 6 captions); BLEU + ROUGE-L +
CIDEr ~8 s for 5,000 images; METEOR, a Java process that first loads its paraphrase tables, 6–12 s of
start-up however few the images, 15–20 s for 5,000. ``meteor=False`` skips it; without Java it is
skipped. SPICE (``spice=True``) needs the Stanford CoreNLP models, which pycocoevalcap downloads on
first use; this module never downloads them: while they are missing SPICE is None and "spice_error"
says how to fetch them. Any SPICE failure is reported that way instead of raised.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import string
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from unip2.data.coco import load_json

logger = logging.getLogger("unip2.eval")

TOKENIZERS = ("ptb", "simple")
_PUNCTUATION_TO_SPACE = str.maketrans({char: " " for char in string.punctuation})


def simple_tokenize(text: str) -> str:
    """Lower-case, punctuation characters → spaces, whitespace runs → one space."""
    return " ".join(text.lower().translate(_PUNCTUATION_TO_SPACE).split())


def tokenize_captions(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]],
                      tokenizer: str) -> tuple[dict, dict]:
    """Tokenize both sides → (gts {id: [ref, ...]}, res {id: [prediction]}), pycocoevalcap's inputs.

    Only the images in ``predictions`` are kept; each must have at least one reference.
    """
    ids = list(predictions)
    missing = [i for i in ids if not references.get(i)]
    if missing:
        raise ValueError(f"{len(missing)} predicted image(s) have no references, e.g. {missing[:5]}")
    if tokenizer == "simple":
        return ({i: [simple_tokenize(c) for c in references[i]] for i in ids},
                {i: [simple_tokenize(predictions[i])] for i in ids})
    if tokenizer != "ptb":
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # One Java call for both sides: PTBTokenizer works line by line, keys only group the lines.
    captions = {("gts", i): [{"caption": c} for c in references[i]] for i in ids}
    captions |= {("res", i): [{"caption": predictions[i]}] for i in ids}
    tokens = PTBTokenizer().tokenize(captions)
    return {i: tokens[("gts", i)] for i in ids}, {i: tokens[("res", i)] for i in ids}


def caption_metrics(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], *,
                    tokenizer: str | None = None, meteor: bool = True, spice: bool = False) -> dict:
    """Score one generated caption per image against that image's reference captions.

    Args:
        predictions: {image_id: generated caption}; the images evaluated.
        references: {image_id: [reference caption, ...]} (may hold more images than ``predictions``).
        tokenizer: "ptb", "simple", or None = "ptb" when Java is available, else "simple".
        meteor: compute METEOR (Java, 6–20 s; see the module docstring).
        spice: also try SPICE (needs the CoreNLP models in place; see the module docstring).

    Returns:
        {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr": float (METEOR None when
        skipped), "tokenizer": "ptb" | "simple", "meteor_skipped": bool, "num_images": int} and, with
        ``spice=True``, "SPICE": float | None and "spice_error": str | None.
    """
    if not predictions:
        raise ValueError("caption_metrics needs at least one prediction")
    has_java = shutil.which("java") is not None
    if tokenizer is None:
        tokenizer = "ptb" if has_java else "simple"
        if not has_java:
            logger.warning("java not found: captions use the simple tokenizer and METEOR is skipped; "
                           "scores are not the official COCO ones")
    gts, res = tokenize_captions(predictions, references, tokenizer)

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    metrics: dict = {f"BLEU-{n + 1}": float(score) for n, score in enumerate(bleu)}
    metrics["METEOR"] = _meteor(gts, res) if meteor and has_java else None
    metrics["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    metrics["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    metrics |= {"tokenizer": tokenizer, "meteor_skipped": metrics["METEOR"] is None, "num_images": len(res)}
    if spice:
        metrics["SPICE"], metrics["spice_error"] = _spice(gts, res, has_java)
    return metrics


def load_coco_caption_references(captions_json_path: str | Path,
                                 image_ids: Iterable[int] | None = None) -> dict[int, list[str]]:
    """COCO captions JSON (``captions_*.json``) → {image_id: [caption, ...]} in file order.

    With ``image_ids``, only those images; an id without any caption is refused.
    """
    payload = load_json(captions_json_path, required_keys=("annotations",))
    references: dict[int, list[str]] = {}
    for annotation in payload["annotations"]:
        references.setdefault(int(annotation["image_id"]), []).append(annotation["caption"].strip())
    if image_ids is None:
        return references
    wanted = [int(i) for i in image_ids]
    missing = [i for i in wanted if i not in references]
    if missing:
        raise ValueError(f"{captions_json_path}: no captions for {len(missing)} image id(s), e.g. {missing[:5]}")
    return {i: references[i] for i in wanted}


def _meteor(gts: dict, res: dict) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    start = time.perf_counter()
    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:  # end the Java process now rather than whenever the scorer is garbage-collected
        if scorer.lock.locked():  # left held by a failed compute_score: its __del__ would block forever
            scorer.lock.release()
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
    logger.info("METEOR on %d images took %.1f s", len(res), time.perf_counter() - start)
    return float(score)


def _spice(gts: dict, res: dict, has_java: bool) -> tuple[float | None, str | None]:
    if not has_java:
        return None, "java not found"
    from pycocoevalcap.spice import get_stanford_models as corenlp

    # Spice() would download CoreNLP from inside library code; only run it once the jar is in place.
    jar = Path(corenlp.SPICEDIR) / corenlp.SPICELIB / f"{corenlp.JAR}.jar"
    if not jar.is_file():
        error = (f"Stanford CoreNLP models missing ({jar}); fetch them once, online, with "
                 "`python -m pycocoevalcap.spice.get_stanford_models`")
        logger.warning("SPICE skipped: %s", error)
        return None, error
    try:
        from pycocoevalcap.spice.spice import Spice

        with contextlib.redirect_stdout(io.StringIO()):
            score, _ = Spice().compute_score(gts, res)
        return float(score), None
    except Exception as error:  # noqa: BLE001 -- SPICE's Java failures are reported, not raised
        logger.warning("SPICE failed: %s", error)
        return None, f"{type(error).__name__}: {error}"
