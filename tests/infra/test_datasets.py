"""Dataset pulling against a real local HTTP server (with faults), a real registry and real folders."""

from __future__ import annotations

import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra import datasets, registry
from tests.support import fileserver
from workspace import errors

FAST = datasets.RetryPolicy(attempts=4, backoff_s=0.01)


@pytest.fixture(autouse=True)
def _allow_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test server is on 127.0.0.1, which the guard refuses unless this setting allows it."""
    monkeypatch.setenv("KAIFLOW_ALLOW_PRIVATE_URLS", "true")


@pytest.fixture
def served(file_server: fileserver.FileServer) -> fileserver.FileServer:
    root = file_server.root
    fileserver.write_jsonl(root / "data" / "train.jsonl", 500)
    pq.write_table(pa.table({"messages": [json.dumps([{"role": "user", "content": f"q{i}"}]) for i in range(50)]}),
                   root / "data" / "train-00000-of-00001.parquet")
    return file_server


def test_pulls_jsonl_and_parquet_named_after_the_url_path(served, tmp_path):
    urls = [served.url_for("data/train.jsonl") + "?download=true&sig=TOKEN-123",
            served.url_for("data/train-00000-of-00001.parquet")]
    fp = datasets.pull(urls, tmp_path / "ds", retry=FAST)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir() if not p.name.startswith(".")) == [
        "train-00000-of-00001.parquet", "train.jsonl"]
    assert [(f.name, f.format) for f in fp.files] == [("train.jsonl", "jsonl"), ("train-00000-of-00001.parquet", "parquet")]
    assert (tmp_path / "ds" / "train.jsonl").read_bytes() == (served.root / "data" / "train.jsonl").read_bytes()
    assert all(f.etag and f.size > 0 and len(f.sha256) == 64 for f in fp.files)
    assert fp.digest.startswith("sha256:") and fp.downloaded_bytes == sum(f.size for f in fp.files)
    dumped = json.dumps(fp.to_dict())
    assert "TOKEN-123" not in dumped, "query strings (signed-URL tokens) never reach the fingerprint"
    assert datasets.load_fingerprint(tmp_path / "ds").digest == fp.digest


def test_second_pull_of_unchanged_data_sends_a_conditional_request_and_keeps_the_digest(served, tmp_path):
    url = served.url_for("data/train.jsonl")
    first = datasets.pull([url], tmp_path / "ds", retry=FAST)
    second = datasets.pull([url], tmp_path / "ds", retry=FAST)
    assert second.digest == first.digest and second.downloaded_bytes == 0
    assert served.hits("data/train.jsonl", status=304) == 1
    assert served.requests[-1][3]["if-none-match"] == first.files[0].etag


def test_without_etags_last_modified_is_used(tmp_path):
    root = tmp_path / "www"
    fileserver.write_jsonl(root / "a.jsonl", 20)
    with fileserver.FileServer(root, etags=False) as srv:
        first = datasets.pull([srv.url_for("a.jsonl")], tmp_path / "ds", retry=FAST)
        second = datasets.pull([srv.url_for("a.jsonl")], tmp_path / "ds", retry=FAST)
        assert srv.requests[-1][2] == 304 and "if-modified-since" in srv.requests[-1][3]
    assert second.digest == first.digest and second.downloaded_bytes == 0


def test_changed_data_is_downloaded_again_with_a_new_digest(served, tmp_path):
    url = served.url_for("data/train.jsonl")
    first = datasets.pull([url], tmp_path / "ds", retry=FAST)
    fileserver.write_jsonl(served.root / "data" / "train.jsonl", 501)
    second = datasets.pull([url], tmp_path / "ds", retry=FAST)
    assert second.digest != first.digest and second.downloaded_bytes == second.files[0].size


def test_a_connection_dropped_mid_file_is_resumed_with_a_range_request(served, tmp_path):
    served.fail("data/train.jsonl", fileserver.DROP, after=10_000)
    fp = datasets.pull([served.url_for("data/train.jsonl")], tmp_path / "ds", retry=FAST)
    statuses = [(s, h.get("range")) for m, p, s, h in served.requests if p == "/data/train.jsonl"]
    assert statuses[0] == (200, None) and statuses[1][0] == 206 and statuses[1][1].startswith("bytes=")
    assert (tmp_path / "ds" / "train.jsonl").read_bytes() == (served.root / "data" / "train.jsonl").read_bytes()
    assert fp.files[0].size == (served.root / "data" / "train.jsonl").stat().st_size


def test_5xx_then_ok_is_retried(served, tmp_path):
    served.fail("data/train.jsonl", fileserver.STATUS, status=503, times=2)
    datasets.pull([served.url_for("data/train.jsonl")], tmp_path / "ds", retry=FAST)
    assert served.hits("data/train.jsonl", status=503) == 2 and served.hits("data/train.jsonl", status=200) == 1


def test_a_server_that_keeps_failing_gives_a_transient_error_after_the_attempts(served, tmp_path):
    served.fail("data/train.jsonl", fileserver.STATUS, status=502, times=None)
    with pytest.raises(errors.DatasetError, match="after 4 attempts: HTTP 502") as info:
        datasets.pull([served.url_for("data/train.jsonl")], tmp_path / "ds", retry=FAST)
    assert info.value.transient
    assert not (tmp_path / "ds" / "train.jsonl").exists() and not list((tmp_path / "ds").glob(".*.part"))


def test_404_is_a_clear_permanent_error(served, tmp_path):
    with pytest.raises(errors.DatasetError, match="404 Not Found: fix the URL in tuning.input.urls") as info:
        datasets.pull([served.url_for("data/missing.jsonl")], tmp_path / "ds", retry=FAST)
    assert not info.value.transient and served.hits("data/missing.jsonl") == 1


def test_an_html_page_instead_of_data_is_refused(served, tmp_path):
    served.fail("data/train.jsonl", fileserver.HTML)
    with pytest.raises(errors.DatasetError, match="HTML page instead of data"):
        datasets.pull([served.url_for("data/train.jsonl")], tmp_path / "ds", retry=FAST)


def test_an_html_page_served_as_octet_stream_is_refused_too(served, tmp_path):
    (served.root / "page.jsonl").write_bytes(fileserver.HTML_PAGE)
    with pytest.raises(errors.DatasetError, match="HTML page instead of data"):
        datasets.pull([served.url_for("page.jsonl")], tmp_path / "ds", retry=FAST)


@pytest.mark.parametrize("name,content,needle", [
    ("weights.bin", b"\x00\x01\x02binary", "unknown format"),
    ("fake.parquet", b'{"a": 1}\n', "does not look like parquet"),
])
def test_unknown_or_mislabelled_formats_are_refused(served, tmp_path, name, content, needle):
    (served.root / name).write_bytes(content)
    with pytest.raises(errors.DatasetError, match=needle):
        datasets.pull([served.url_for(name)], tmp_path / "ds", retry=FAST)


def test_size_limit(served, tmp_path):
    with pytest.raises(errors.DatasetError, match="over the limit of 1000 bytes: raise KAIFLOW_MAX_DATASET_BYTES"):
        datasets.pull([served.url_for("data/train.jsonl")], tmp_path / "ds", max_bytes=1000, retry=FAST)


def test_a_large_file_streams_with_bounded_memory(file_server, tmp_path):
    size = 48 << 20
    fileserver.write_jsonl(file_server.root / "big.jsonl", size=size)
    tracemalloc.start()
    try:
        fp = datasets.pull([file_server.url_for("big.jsonl")], tmp_path / "ds", retry=FAST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fp.files[0].size >= size
    assert peak < 8 << 20, f"peak Python allocation {peak} bytes while streaming {size} bytes"


# --- guards -------------------------------------------------------------------------------------
@pytest.mark.parametrize("url,needle", [
    ("http://127.0.0.1:9/x.jsonl", "loopback"),
    ("http://169.254.169.254/latest/meta-data/x.json", "link-local"),
    ("http://10.1.2.3/x.jsonl", "private"),
    ("http://[::1]:9/x.jsonl", "loopback"),
    ("http://localhost:9/x.jsonl", "loopback"),
])
def test_private_addresses_are_refused_by_default(url, needle, tmp_path, monkeypatch):
    monkeypatch.delenv("KAIFLOW_ALLOW_PRIVATE_URLS")
    with pytest.raises(errors.DatasetError, match=needle) as info:
        datasets.pull([url], tmp_path / "ds", retry=FAST)
    assert "KAIFLOW_ALLOW_PRIVATE_URLS=true" in str(info.value)


def test_the_setting_allows_loopback(served, tmp_path, monkeypatch):
    monkeypatch.setenv("KAIFLOW_ALLOW_PRIVATE_URLS", "false")
    with pytest.raises(errors.DatasetError, match="loopback"):
        datasets.pull([served.url_for("data/train.jsonl")], tmp_path / "ds", retry=FAST)
    datasets.pull([served.url_for("data/train.jsonl")], tmp_path / "ds", retry=FAST, allow_private=True)


@pytest.mark.parametrize("url", ["ftp://example.com/x.jsonl", "file:///etc/passwd"])
def test_only_http_and_https(url, tmp_path):
    with pytest.raises(errors.DatasetError, match="only http and https"):
        datasets.pull([url], tmp_path / "ds", retry=FAST)


def test_redirects_are_followed_and_every_hop_is_checked(served, tmp_path):
    served.fail("old/train.jsonl", fileserver.REDIRECT, location="/data/train.jsonl")
    fp = datasets.pull([served.url_for("old/train.jsonl")], tmp_path / "ds", retry=FAST)
    assert fp.files[0].name == "train.jsonl" and served.hits("data/train.jsonl", status=200) == 1
    served.fail("sneaky.jsonl", fileserver.REDIRECT, location="file:///etc/passwd")
    with pytest.raises(errors.DatasetError, match="only http and https"):
        datasets.pull([served.url_for("sneaky.jsonl")], tmp_path / "ds2", retry=FAST)


def test_the_metadata_address_is_refused_without_connecting():
    with pytest.raises(errors.DatasetError, match="link-local"):
        datasets.check_url("http://169.254.169.254/latest/meta-data/iam.json", allow_private=False)


# --- other sources ----------------------------------------------------------------------------
def test_volume_source_gives_the_same_digest_as_the_same_files_over_http(served, tmp_path):
    over_http = datasets.pull([served.url_for("data/train.jsonl"), served.url_for("data/train-00000-of-00001.parquet")],
                              tmp_path / "http", retry=FAST)
    spec = {"volumeSource": {"hostPath": {"path": str(served.root / "data")}}}
    from_volume = datasets.pull(spec, tmp_path / "vol")
    assert from_volume.digest == over_http.digest
    again = datasets.pull(spec, tmp_path / "vol")
    assert again.downloaded_bytes == 0 and again.digest == from_volume.digest


def test_volume_kinds_other_than_hostpath_are_explained(tmp_path):
    with pytest.raises(errors.DatasetError, match="only hostPath.path"):
        datasets.pull({"volumeSource": {"persistentVolumeClaim": {"claimName": "data"}}}, tmp_path / "ds")
    with pytest.raises(errors.DatasetError, match="does not exist"):
        datasets.pull({"volume": str(tmp_path / "nowhere")}, tmp_path / "ds")


def test_source_from_the_workspace_spec_model(served, tmp_path):
    from workspace import spec  # the project's own module: a failure to import it fails, never skips

    model = spec.DataSource.model_validate({"urls": [served.url_for("data/train.jsonl")]})
    fp = datasets.pull(model, tmp_path / "ds", retry=FAST)
    assert fp.files[0].name == "train.jsonl"


def test_exactly_one_source_kind():
    with pytest.raises(errors.DatasetError, match="exactly one"):
        datasets.Source(urls=("http://a/b.jsonl",), image="x.io/y:z")


def test_image_source_pulls_data_from_a_registry_and_skips_an_unchanged_image(plain_registry, tmp_path):
    data = tmp_path / "img" / "data"
    fileserver.write_jsonl(data / "train.jsonl", 30)
    layout = tmp_path / "img-layout"
    # build a Kaito-style image with /data/train.jsonl in a layout, then copy it to the registry
    store = registry.LayoutStore(registry.RegistrySettings(layout_root=tmp_path / "layouts"))
    ref = store._parse(f"oci:{layout}:v1")
    layer = registry._LayerBuilder([data / "train.jsonl"], 0)
    digest, size = store._put_blob(ref, layer.fresh_chunks)
    config = json.dumps({"rootfs": {"diff_ids": [layer.diff_id]}}).encode()
    config_digest, _ = store._put_blob(ref, lambda: [config])
    store._put_manifest(ref, registry._adapter_manifest(config_digest, len(config), digest, size, None),
                        registry.OCI_MANIFEST, "v1")
    settings = registry.RegistrySettings(layout_root=tmp_path / "layouts", attempts=2, backoff_s=0.01)
    image = f"{plain_registry.host}/datasets/chat:v1"
    registry.copy(f"oci:{layout}:v1", image, settings)
    first = datasets.pull({"image": image}, tmp_path / "ds", settings=settings)
    assert [f.name for f in first.files] == ["train.jsonl"] and first.image_digest
    assert (tmp_path / "ds" / "train.jsonl").read_bytes() == (data / "train.jsonl").read_bytes()
    second = datasets.pull({"image": image}, tmp_path / "ds", settings=settings)
    assert second.downloaded_bytes == 0 and second.digest == first.digest


def test_hf_source_without_a_reachable_hub_says_what_to_do(tmp_path):
    with pytest.raises(errors.DatasetError, match="Hugging Face hub") as info:
        datasets.pull(["hf://datasets/philschmid/dolly-15k-oai-style"], tmp_path / "ds")
    assert "tuning.input.urls or volumeSource" in str(info.value)
