"""When the real Pods tier rebuilds an image: the content hash covers exactly what the Dockerfile copies from the
build context, as docker and buildah see it (less what .dockerignore leaves out)."""

from pathlib import Path

import pytest

from promptopt_harness.images import content_hash, context_files, copied_sources, ignored

REPO = Path(__file__).resolve().parents[2]


def test_the_worker_dockerfile_copies_the_constraints_the_project_and_the_three_packages():
    assert copied_sources(REPO / "Dockerfile.worker") == [
        "constraints/worker.txt",
        "pyproject.toml",
        "README.md",
        "promptopt",
        "operator",
        "worker",
    ]


def test_a_copy_from_another_stage_takes_nothing_from_the_context(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM x AS build\nCOPY --chown=1:1 a.txt \\\n  b.txt /dst/\n"
        "FROM y\nCOPY --from=build /opt /opt\n# COPY commented.txt /\n"
    )
    assert copied_sources(dockerfile) == ["a.txt", "b.txt"]


@pytest.mark.parametrize(
    "path,left_out",
    [
        ("promptopt/__pycache__/cli.cpython-311.pyc", True),  # **/__pycache__ at any depth
        ("promptopt/cli.py", False),
        ("promptopt.egg-info/PKG-INFO", True),  # *.egg-info at the root
        ("worker/promptopt_worker.egg-info/PKG-INFO", False),  # ... only there: `*` stays within one path element
        ("tests/test_layout.py", True),
        ("deploy/helm/promptopt/values.yaml", True),
        ("harness/promptopt_harness/keys/server.key", True),  # **/*.key
    ],
)
def test_dockerignore_is_read_as_docker_reads_it(path, left_out):
    patterns = [
        line for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert ignored(path, patterns) is left_out


@pytest.fixture
def context(tmp_path):
    """A small build context: what a Dockerfile copies, what it does not, and what .dockerignore leaves out."""
    for name, text in {
        "Dockerfile.app": "FROM base\nCOPY app app\nCOPY setup.cfg ./\n",
        "setup.cfg": "[x]\n",
        "app/main.py": "print(1)\n",
        "app/__pycache__/main.pyc": "junk",
        "docs/readme.md": "words\n",
        ".dockerignore": "**/__pycache__\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_hash_changes_with_what_is_copied_and_only_with_it(context):
    dockerfile = context / "Dockerfile.app"
    assert [p.relative_to(context).as_posix() for p in context_files(context, dockerfile)] == [
        "app/main.py",
        "setup.cfg",
    ]
    before = content_hash(context, dockerfile, "sha256:base")
    (context / "docs/readme.md").write_text("other words\n")
    (context / "app/__pycache__/main.pyc").write_text("other junk")
    assert content_hash(context, dockerfile, "sha256:base") == before
    (context / "app/main.py").write_text("print(2)\n")
    changed_source = content_hash(context, dockerfile, "sha256:base")
    assert changed_source != before
    assert content_hash(context, dockerfile, "sha256:newer-base") != changed_source
    (context / "Dockerfile.app").write_text("FROM base\nCOPY app app\nCOPY setup.cfg ./\nUSER 65532\n")
    assert content_hash(context, dockerfile, "sha256:base") != changed_source
