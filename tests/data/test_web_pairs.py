"""Web image-text pairs without Ray: shard paths and patterns, tar shard → Parquet, skipped samples counted,
and the rows read (with COCO's, one caption per image) by the captioning and retrieval preprocessing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from unip2.data.manifest import load_manifest, write_manifest
from unip2.data.parquet_schema import SCHEMAS
from unip2.data.row_reader import RowReader
from unip2.data.shard_paths import expand_braces, is_uri, list_shards, split_uri
from unip2.data.web_pairs import convert_shard, image_id_of, sample_key
from unip2.model.tokenizer import TextTokenizer
from unip2.tasks import TASKS


def test_brace_patterns_expand_like_img2dataset_shard_names():
    assert expand_braces("s3://b/cc3m/{00000..00002}.tar") == [
        "s3://b/cc3m/00000.tar", "s3://b/cc3m/00001.tar", "s3://b/cc3m/00002.tar"]
    assert expand_braces("s3://b/p/{00098..00101}.tar")[-2:] == ["s3://b/p/00100.tar", "s3://b/p/00101.tar"]
    assert expand_braces("/d/{a,b}/{8..10}.tar") == ["/d/a/8.tar", "/d/a/9.tar", "/d/a/10.tar",
                                                     "/d/b/8.tar", "/d/b/9.tar", "/d/b/10.tar"]
    assert expand_braces("gs://b/one.tar") == ["gs://b/one.tar"]
    for bad in ("s3://b/{1..{2,3}}.tar", "s3://b/{5..1}.tar", "s3://b/{x}.tar", "s3://b/{1..3.tar"):
        with pytest.raises(ValueError):
            expand_braces(bad)


def test_uris_are_told_from_local_paths_without_touching_any_filesystem():
    assert split_uri("s3://bucket/laion/00000.tar") == ("s3", "bucket/laion/00000.tar")
    assert split_uri("GS://bucket/x") == ("gs", "bucket/x")
    assert split_uri("/datasets/cc3m") == (None, "/datasets/cc3m")
    assert split_uri("relative/dir") == (None, "relative/dir")
    assert is_uri("file:///tmp/x") and not is_uri("C:\\data")


def test_shards_are_listed_from_folders_uris_and_patterns(web_shards, tmp_path):
    folder = web_shards["web"]
    names = ["00003.tar", "00004.tar"]  # the .parquet and _stats.json beside them are not shards
    assert list_shards(str(folder)) == [str(folder / n) for n in names]
    assert list_shards(f"file://{folder}") == [f"file://{folder}/{n}" for n in names]
    assert list_shards(f"file://{folder}/" + "{00003..00004}.tar") == [f"file://{folder}/{n}" for n in names]
    assert list_shards(str(folder / "00004.tar")) == [str(folder / "00004.tar")]
    with pytest.raises(FileNotFoundError, match="no shard at"):
        list_shards(str(folder / "{00007..00009}.tar"))
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list_shards(str(tmp_path / "missing"))


def test_sample_keys_and_image_ids():
    assert sample_key("000030001.jpg") == ("000030001", "jpg")
    assert sample_key("part/000030001.seg.png") == ("part/000030001", "seg.png")
    assert sample_key("README") is None and sample_key("._000030001.jpg") is None
    assert image_id_of("000030001") == 30001
    hashed = image_id_of("laion/abc-def")
    assert hashed == image_id_of("laion/abc-def") and 0 <= hashed < 2 ** 63


def test_a_shard_converts_to_rows_and_skips_bad_samples_by_reason(web_shards, tmp_path):
    result = convert_shard(str(web_shards["web"] / "00004.tar"), str(tmp_path / "train" / "part-00001"),
                           rows_per_file=4)
    assert result["skipped"] == web_shards["skipped"]
    assert result["rows"] == 6
    assert result["files"] == [str(tmp_path / "train" / f"part-00001-00{i}.parquet") for i in range(2)]
    assert [pq.read_metadata(f).num_rows for f in result["files"]] == [4, 2]
    rows = [row for f in result["files"] for row in pq.read_table(f).to_pylist()]
    assert pq.read_schema(result["files"][0]).names == SCHEMAS["coco_captions"].names
    assert [r["image_id"] for r in rows] == [40000 + i for i in range(6)]  # tar order
    for row in rows:  # one caption per image, from the .json (this shard has no .txt captions)
        assert row["captions"] == [web_shards["captions"][row["image_id"]]]
        assert row["file_name"] == f"{row['image_id']:09d}.jpg" and row["width"] >= 40
        assert row["image"][:2] == b"\xff\xd8"  # the JPEG bytes as they were, not re-encoded


@pytest.mark.parametrize("extra", [0, 100], ids=["cut-between-members", "cut-inside-a-member"])
def test_a_cut_off_shard_keeps_the_samples_before_the_damage(web_shards, tmp_path, extra):
    data = (web_shards["web"] / "00003.tar").read_bytes()
    assert len(data) % 1024 == 0  # so half of it ends at a tar block boundary
    cut = tmp_path / "00009.tar"
    cut.write_bytes(data[:len(data) // 2 + extra])
    result = convert_shard(str(cut), f"file://{tmp_path}/out/part-00000")  # an output URI: URIs come back
    assert result["skipped"] == {"unreadable_shard": 1}
    assert 0 < result["rows"] < 8 and all(f.startswith("file://") for f in result["files"])
    assert pq.read_table(result["files"][0]).column("image_id").to_pylist()[0] == 30000
    missing = convert_shard(str(tmp_path / "00010.tar"), str(tmp_path / "out" / "part-00001"))
    assert missing == {"files": [], "rows": 0, "skipped": {"missing_shard": 1}}


def test_coco_and_web_rows_read_as_one_split_and_preprocess_with_one_caption(web_shards, embedded_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(embedded_data, root)
    web = convert_shard(str(web_shards["web"] / "00003.tar"), f"file://{tmp_path}/elsewhere/part-00000")
    manifest = load_manifest(root)  # a dataset whose files are URIs outside the folder
    manifest["datasets"]["web_pairs"] = {"splits": {"train": {"rows": web["rows"], "files": web["files"]}}}
    write_manifest(root, manifest)
    coco_rows = manifest["datasets"]["coco_captions"]["splits"]["train"]["rows"]

    reader = RowReader(root, ["coco_captions", "web_pairs"], "train")
    assert reader.num_rows == coco_rows + 8
    rows = reader.read([coco_rows + 7, 0, coco_rows])  # web, coco, web: one row space, COCO first
    assert rows["image_id"][0] == 30007 and rows["image_id"][2] == 30000
    assert len(rows["captions"][0]) == 1 and len(rows["captions"][1]) == 5
    tokenizer = TextTokenizer.from_file(None)
    for name in ("captioning", "retrieval"):
        batch = TASKS[name].preprocess(rows, image_size=64, tokenizer=tokenizer, train=True,
                                       rng=np.random.default_rng(0), max_text_length=48)
        assert batch["images"].shape == (3, 3, 64, 64) and batch["input_ids"].shape[0] == 3
        assert [len(r) for r in batch["references"]] == [1, 5, 1]
        assert tokenizer.decode(batch["input_ids"][0]) == web_shards["captions"][30007]
        evaluation = TASKS[name].preprocess(rows, image_size=64, tokenizer=tokenizer, train=False,
                                            rng=np.random.default_rng(0), max_text_length=48)
        assert tokenizer.decode(evaluation["input_ids"][2]) == web_shards["captions"][30000]
    assert json.loads((root / "manifest.json").read_text())["datasets"]["coco_captions"] == \
        load_manifest(embedded_data)["datasets"]["coco_captions"]
