"""The README's examples run as written, and CI can find its Quickstart."""

import re

import jax
import pytest

from tests import readme


@pytest.mark.parametrize('page', ['README.md', 'docs/losses.md'])
def test_python_examples_run(capsys, page):
  text = (readme.ROOT / page).read_text()
  blocks = readme.code_blocks('python', text)
  assert blocks
  namespace = {}
  # As a reader runs them: with XLA's optimisations (the suite turns them
  # off, conftest.py), which make the README's training ten times faster.
  saved = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    for block in blocks:  # later blocks build on earlier ones, as a reader's do
      exec(compile(block, page, 'exec'), namespace)  # pylint: disable=exec-used
  finally:
    jax.config.update('jax_disable_most_optimizations', saved)
  printed = capsys.readouterr().out.split()
  if page == 'README.md':
    assert printed[-1].startswith('contrastive=')
    return
  # The shard_map example prints the global loss twice: per device and whole.
  assert abs(float(printed[-1]) - float(printed[-2])) < 1e-4


def test_quickstart_installs_then_trains_then_tests():
  # .ci/run runs these two commands as written, in a fresh virtual
  # environment; it checks the main job's WORKDIR/results.json.
  main_job, tests = readme.quickstart_commands()
  assert main_job.startswith('pip install -e . && python -m jcc.main ')
  assert re.search(r'--workdir=\S+', main_job)
  assert tests.startswith('pip install -e ') and 'pytest' in tests


def test_the_slow_tier_adds_the_tfds_extra_and_eight_devices():
  # .ci/run runs it after the Quickstart's commands, in the same venv.
  command = readme.slow_tests_command()
  assert command.startswith("pip install -e '.[test,tfds]' && ")
  assert 'JCC_TEST_DEVICES=8' in command
  assert "pytest -n 0 -m 'slow or tfds'" in command


def test_section_and_blocks_are_read_exactly():
  text = ('# T\n## A\nintro\n```bash\necho a\n```\n## B\n```bash\necho b\n'
          '```\n```python\nx = 1\n```\n')
  assert readme.code_blocks('bash', readme.section('A', text)) == ['echo a']
  assert readme.code_blocks('bash', text) == ['echo a', 'echo b']
  assert readme.code_blocks('python', text) == ['x = 1']
