"""The README's code blocks, read as a reader copies them.

``python3 tests/readme.py quickstart`` prints the Quickstart's shell commands
(the main job, the fast tests) and ``python3 tests/readme.py slow-tests`` the
slow tier's, each followed by a NUL byte, so that .ci/run runs exactly what
the README says. Standard library only: it runs before anything is
installed.
"""

from __future__ import annotations

import pathlib
import re
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
MULTIHOST = ROOT / 'docs' / 'multihost.md'


def section(title: str, text: str | None = None) -> str:
  """The body of README's ``## title`` section, up to the next ``## ``."""
  text = README.read_text() if text is None else text
  found = re.search(rf'^## {re.escape(title)}\n(.*?)(?=^## |\Z)', text,
                    re.MULTILINE | re.DOTALL)
  if not found:
    raise LookupError(f'README.md has no "## {title}" section.')
  return found.group(1)


def code_blocks(language: str, text: str | None = None) -> list[str]:
  """The fenced ```language blocks of ``text`` (default: the whole README)."""
  text = README.read_text() if text is None else text
  return [block.strip() for block in
          re.findall(rf'^```{language}\n(.*?)^```', text,
                     re.MULTILINE | re.DOTALL)]


def quickstart_commands() -> list[str]:
  """The Quickstart's two shell commands: the main job, then the tests."""
  commands = code_blocks('bash', section('Quickstart'))
  if len(commands) != 2:
    raise LookupError(f'README.md\'s Quickstart has {len(commands)} bash '
                      'blocks; CI expects two: the main job and the tests.')
  return commands


def slow_tests_command() -> str:
  """The "Tests" section's command for the slow tier."""
  commands = [c for c in code_blocks('bash', section('Tests'))
              if '-m ' in c and 'slow' in c]
  if len(commands) != 1:
    raise LookupError('README.md\'s "Tests" needs one bash block that runs '
                      'the slow tier (pytest -m ... slow ...).')
  return commands[0]


def multiprocess_recipe() -> tuple[dict[str, str], list[str]]:
  """The one-machine recipe of docs/multihost.md: (environment, argv).

  argv is the command each process runs, with ``$id`` where its process id
  goes; the environment holds the variables set before it.
  """
  blocks = [b for b in code_blocks('bash', MULTIHOST.read_text())
            if b.startswith('for id in')]
  if len(blocks) != 1:
    raise LookupError('docs/multihost.md needs one bash block starting '
                      '"for id in": the one-machine recipe.')
  joined = blocks[0].replace('\\\n', ' ')
  line = next(l for l in joined.splitlines() if 'jcc.main' in l)
  words = shlex.split(line.strip().rstrip('&'), posix=False)
  start = words.index('python')
  env = dict(w.split('=', 1) for w in words[:start])
  return env, words[start:]


if __name__ == '__main__':
  if sys.argv[1:] == ['quickstart']:
    printed = quickstart_commands()
  elif sys.argv[1:] == ['slow-tests']:
    printed = [slow_tests_command()]
  else:
    sys.exit('usage: python3 tests/readme.py quickstart|slow-tests')
  sys.stdout.write(''.join(command + '\0' for command in printed))
