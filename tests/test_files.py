"""Files written whole or not at all, CSV cells safe to open, and the
workdir's files checked before anything is read."""

import csv
import json
import os

import numpy as np
import pytest

from jcc import checkpoint
from jcc import evaluate
from jcc import files
from jcc import report
from jcc.errors import CheckpointError


class Interrupted(Exception):
  pass


@pytest.mark.parametrize('name', [
    '=HYPERLINK("http://x","click").png', '=1+2.png', '+cmd.png', '-2+3.png',
    '@SUM(A1).png', '\tx.png', '\rx.png'])
def test_formula_cells_are_neutralised_and_read_back(tmp_path, name):
  path = tmp_path / 'p.csv'
  rows = report.assignment_rows({'image': [name, 'plain.png']},
                                [0, 1], [1.0, 1.0], [0, 1])
  report.write_assignments(str(path), rows)
  with open(path, newline='', encoding='utf-8') as f:
    read = list(csv.DictReader(f))
  assert [r['image'] for r in read] == ["'" + name, 'plain.png']
  assert [r['cluster'] for r in read] == ['0', '1']


def test_cells_keep_commas_quotes_newlines_unicode_and_numbers():
  for text in ('a,b.png', 'say "hi".png', 'two\nlines.png', 'café-日本.png'):
    assert files.csv_cell(text) == text
  assert files.csv_cell(-3) == -3 and files.csv_cell(0.5) == 0.5


def test_names_that_are_not_utf8_are_escaped_and_stay_distinct():
  raw = os.fsdecode(b'bad\xffbyte.png')  # as os.listdir gives it
  assert files.csv_cell(raw) == 'bad\\xffbyte.png'
  assert files.csv_cell(os.fsdecode(b'bad\xfebyte.png')) != files.csv_cell(raw)


def test_a_failed_csv_write_keeps_the_previous_file(tmp_path):
  path = tmp_path / 'predictions.csv'
  good = report.assignment_rows({'image': ['a.png', 'b.png']}, [0, 1],
                                [1.0, 1.0], [0, 1])
  report.write_assignments(str(path), good)
  before = path.read_bytes()
  bad = [dict(good[0]), dict(good[1], confidence='not a number')]
  with pytest.raises(ValueError):  # fails on the second row
    report.write_assignments(str(path), bad)
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ['predictions.csv']


def test_a_failed_results_write_keeps_the_previous_file(tmp_path):
  evaluate.write_results(str(tmp_path), {'acc': 0.5})
  with pytest.raises(TypeError):  # json cannot write the set, half way
    evaluate.write_results(str(tmp_path), {'acc': 0.9, 'bad': {1, 2}})
  assert json.loads((tmp_path / 'results.json').read_text()) == {'acc': 0.5}
  assert sorted(os.listdir(tmp_path)) == ['results.json']


def test_a_failed_model_json_write_leaves_none(tmp_path):
  with pytest.raises(TypeError):
    checkpoint.write_model_signature(str(tmp_path), {'backbone': object()})
  assert os.listdir(tmp_path) == []


def test_an_interrupted_write_leaves_the_file_and_no_temporary(tmp_path):
  path = tmp_path / 'out.txt'
  path.write_text('old')
  with pytest.raises(Interrupted):
    with files.atomic_write(str(path)) as f:
      f.write('new, half')
      raise Interrupted
  assert path.read_text() == 'old' and os.listdir(tmp_path) == ['out.txt']


@pytest.mark.parametrize('name,make', [
    ('results.json', 'dir'), ('predictions.csv', 'dir'), ('lock', 'dir'),
    ('model.json', 'dir'), ('report', 'file'), ('checkpoints', 'file'),
    ('results.json', 'read-only')])
def test_the_wrong_kind_of_thing_in_the_workdir_is_one_line(
    tmp_path, name, make):
  path = tmp_path / name
  if make == 'dir':
    path.mkdir()
  else:
    path.write_text('x')
  if make == 'read-only':
    path.chmod(0o444)
    if os.access(path, os.W_OK):
      pytest.skip('running as a user who may write read-only files (root)')
  with pytest.raises(files.WorkdirError, match=name) as error:
    checkpoint.check_workdir(str(tmp_path))
  assert '\n' not in str(error.value) and 'another --workdir' in str(
      error.value)


@pytest.mark.parametrize('content,match', [
    ('', 'cannot be read as JSON'), ('{"backbone": "conv', 'cannot be read'),
    ('[1, 2]', 'not the object of model settings'),
    ('{"a": 1}', 'not the object of model settings')])
def test_a_damaged_model_json_is_one_line(tmp_path, content, match):
  (tmp_path / 'model.json').write_text(content)
  with pytest.raises(CheckpointError, match=match):
    checkpoint.check_model_signature(str(tmp_path), {'backbone': 'convnet'})
