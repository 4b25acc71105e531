"""The README and docs/ stay true to the code: links resolve, generated tables are current,
every ``--conf`` key the server accepts is documented."""
import re
from pathlib import Path

from medseg.config import CONF_KEYS, unknown_keys
from medseg.docs_tables import REPO_ROOT, replace_block, stale_blocks

DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "bench" / "README.md",
             REPO_ROOT / "slicer_extension" / "README.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors: headings lower-cased, punctuation but '-' and '_' dropped, spaces to '-'."""
    anchors, text = set(), re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for title in re.findall(r"^#+ (.+)$", text, flags=re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-"))
    return anchors


def broken_links(path: Path) -> list[str]:
    broken = []
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            broken.append(f"{target} (no such heading)")
    return broken


def test_every_link_in_the_readme_and_docs_resolves():
    assert all(p.exists() for p in DOC_FILES)
    broken = {p.name: b for p in DOC_FILES if (b := broken_links(p))}
    assert not broken, broken


def test_the_link_check_catches_a_missing_file_and_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Title here\n[ok](#title-here) [bad](#nope) [gone](b.md) [web](https://x.org)\n")
    assert broken_links(tmp_path / "a.md") == ["#nope (no such heading)", "b.md (no such file)"]


def test_every_conf_key_the_server_reads_is_documented():
    documented = (REPO_ROOT / "docs" / "configuration.md").read_text()
    source = (REPO_ROOT / "lib" / "medseg" / "config.py").read_text()
    read = set(re.findall(r"conf(?:\.get\(|\[)\"(\w+)\"", source)) | set(re.findall(r"_number\(conf, \"(\w+)\"", source))
    read |= set(re.findall(r"_bool\(\"(\w+)\"", source))
    assert {"models", "labels", "max_image_voxels", "interactive_cache_mb"} <= read
    assert read <= {key.name for key in CONF_KEYS}, read - {key.name for key in CONF_KEYS}
    for key in CONF_KEYS:
        assert f"| `{key.name}` |" in documented, key.name
    assert unknown_keys({key.name: "" for key in CONF_KEYS}) == []
    assert unknown_keys({"modles": "unet3d"}) == ["modles"]  # a typo is logged and ignored


def test_generated_tables_are_up_to_date():
    assert stale_blocks() == [], "run: python -m medseg.docs_tables"


def test_replace_block_swaps_only_the_marked_text():
    text = "a\n<!-- k:start -->\nold\n<!-- k:end -->\nb\n"
    assert replace_block(text, "k", "new") == "a\n<!-- k:start -->\nnew\n<!-- k:end -->\nb\n"
    assert replace_block("a\n", "k", "new").endswith("<!-- k:start -->\nnew\n<!-- k:end -->\n")


def test_readme_is_a_short_tour_with_the_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    assert "make test" in readme and "make serve" in readme
