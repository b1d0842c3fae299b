"""Developer tasks: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``, ``nox -s bench``."""

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON_FILES = ["t2t", "tests", "bench", "examples", "noxfile.py"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite against an installed copy of the package."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark scenario at its default size (not a default session).

    The run took about 4 minutes on a 2-core VM and needs an otherwise idle
    machine. Results go to bench/results/. Pass options after ``--``, for
    example ``nox -s bench -- --plot``.
    """
    session.install(".[bench]")
    session.run("python", "-m", "bench", "all", "--no-progress", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *PYTHON_FILES)
    session.run("ruff", "format", "--check", *PYTHON_FILES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy in strict mode."""
    session.install(".", "mypy>=1.11")
    session.run("mypy", "t2t")
