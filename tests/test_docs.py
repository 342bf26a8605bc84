"""The README is a user's guide that starts with the two commands, and every link in it and in docs/ resolves."""

import re

from pipeline_src.config import REPO_ROOT


def test_readme_starts_with_the_two_commands_and_stays_short():
    text = (REPO_ROOT / "README.md").read_text()
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["make pipeline", "make test"]
    assert len(text.splitlines()) <= 300


def test_every_relative_link_resolves():
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
