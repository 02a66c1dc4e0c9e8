"""Training beyond CC: the neighbour terms (mined at the end of the warm-up,
fed by the pipeline, checkpointed with the state) and self-labelling."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcc import evaluate
from jcc import models
from jcc import objective
from jcc import parallel
from jcc import pipeline
from jcc import sources
from jcc import step
from jcc import train
from jcc import validate
from jcc import workflows
from tests.conftest import tiny_config


def _with_neighbors(**train_overrides):
  config = tiny_config(num_neighbors=5, neighbor_update_every_steps=3,
                       **train_overrides)
  config.loss.neighbor_consistency = 1.0
  config.loss.neighbor_instance = 0.5
  return config


def _assert_same_params(a: train.Trainer, b: train.Trainer) -> None:
  for x, y in zip(jax.tree.leaves(a.state.params),
                  jax.tree.leaves(b.state.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_neighbor_terms_are_computed_only_with_a_weight():
  config = _with_neighbors()
  model = models.build_model(config, channels=1)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 8, 8, 1)))
  variables = model.init(jax.random.key(0), x)
  outputs = model.apply(variables, x, decode=True)
  neighbor = jax.tree.map(lambda a: a[:4], outputs)
  terms = objective.compute_loss_terms(outputs, x, jnp.full((4, 10), 0.1),
                                  config.loss, neighbor=neighbor)
  assert {'neighbor_consistency', 'neighbor_instance'} <= set(terms)
  assert all(np.isfinite(v) for v in terms.values())
  assert validate.uses_neighbors(config) and not validate.uses_neighbors(
      tiny_config())
  assert 'neighbor_instance' not in objective.compute_loss_terms(
      outputs, x, jnp.full((4, 10), 0.1), tiny_config().loss)


def test_the_pipeline_pairs_each_row_with_a_chosen_neighbour():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
  dataset = sources.ImageDataset('t', images, None)
  table = rng.integers(0, 40, (40, 3)).astype(np.int32)
  whole = list(pipeline.train_batches(dataset, 8, 1, 0, 6, neighbors=table))
  for s, batch in enumerate(whole):
    slot = pipeline.neighbor_choice(8, 3, 1, s)
    np.testing.assert_array_equal(batch['neighbor_images'],
                                  images[table[batch['indices'], slot]])
  # Two hosts together feed what one does.
  halves = [list(pipeline.train_batches(dataset, 8, 1, 0, 6, i, 2, table))
            for i in range(2)]
  for one, a, b in zip(whole, *halves):
    np.testing.assert_array_equal(one['neighbor_images'], np.concatenate(
        [a['neighbor_images'], b['neighbor_images']]))


@pytest.mark.slow
def test_neighbors_are_mined_after_the_warm_up_and_resume_exactly(tmp_path):
  # 3 epochs of 7 steps; mined at steps 7, 10, 13, 16, 19. The resumed run
  # restarts at 14 between two minings: it must use the saved neighbours.
  straight = workflows.build_trainer(_with_neighbors(num_epochs=3),
                                     str(tmp_path / 'a'))
  unmined = np.asarray(straight.run.neighbors)
  assert not np.any(unmined != np.arange(1797)[:, None])
  straight.train()
  table = np.asarray(straight.run.neighbors)
  assert table.shape == (1797, 5)
  assert not np.any(table == np.arange(1797)[:, None])  # never itself
  first = workflows.build_trainer(_with_neighbors(num_epochs=2),
                                  str(tmp_path / 'b'))
  first.train()
  first.close()
  resumed = workflows.build_trainer(_with_neighbors(num_epochs=3),
                                    str(tmp_path / 'b'))
  assert resumed.restore_latest()
  np.testing.assert_array_equal(np.asarray(resumed.run.neighbors),
                                np.asarray(first.run.neighbors))
  resumed.train()
  np.testing.assert_array_equal(np.asarray(resumed.run.neighbors), table)
  _assert_same_params(straight, resumed)
  straight.close()
  resumed.close()


@pytest.mark.slow
def test_the_warm_up_of_a_neighbour_run_is_the_plain_warm_up(tmp_path):
  # The neighbour pass starts with the joint phase: until then the steps
  # are those of a run without neighbour terms, bit for bit.
  runs = []
  for name, config in (('plain', tiny_config(num_epochs=1)),
                       ('neighbors', _with_neighbors(num_epochs=1))):
    trainer = workflows.build_trainer(config, str(tmp_path / name))
    trainer.train()
    runs.append(jax.device_get(trainer.state.params))
    trainer.close()
  for a, b in zip(*map(jax.tree.leaves, runs)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_self_labelling_follows_the_method_and_resumes_exactly(tmp_path,
                                                              caplog):
  # 2 epochs of the method (14 steps), then 1 of self-labelling; a low
  # threshold, since the tiny model is never 99% sure.
  def config(epochs):
    c = tiny_config(num_epochs=2, selflabel_epochs=epochs,
                    selflabel_threshold=0.2)
    return c
  straight = workflows.build_trainer(config(1), str(tmp_path / 'a'))
  assert (straight.plan.joint_end, straight.plan.total_steps) == (14, 21)
  with caplog.at_level('INFO'):
    straight.train()
  records = [json.loads(line) for line in
             (tmp_path / 'a' / 'metrics.jsonl').read_text().splitlines()]
  losses_at = {r['step']: {k[5:] for k in r if k.startswith('loss/')}
               for r in records if 'loss/total' in r}
  assert losses_at[14] >= {'instance', 'cluster', 'kl'}
  # The stage keeps the method's terms and adds its own.
  assert losses_at[15] == losses_at[21] == losses_at[14] | {'self_labeling'}
  assert all(np.isfinite(r['loss/total']) for r in records
             if 'loss/total' in r)
  assert any(r.get('loss/self_labeling', 0) > 0 for r in records)
  # Stopped at the end of the method, resumed into the stage.
  first = workflows.build_trainer(config(0), str(tmp_path / 'b'))
  first.train()
  # The stage says what it starts from: the confident predictions of the
  # model of step 14 (evaluated, none is above 0.2 yet) ...
  probs = first.passes.outputs(first.state)['cluster_probs']
  confident = evaluate.confident_predictions(first.dataset.labels, probs, 0.2)
  assert ('Self-labelling: 7 steps; pseudo-labels (the cluster head above '
          f'train.selflabel_threshold): {100 * confident["fraction"]:.1f}% '
          'of images above 0.2') in caplog.text
  # ... and how right they are, where there are some.
  threshold = float(np.median(probs.max(1)))
  confident = evaluate.confident_predictions(first.dataset.labels, probs,
                                             threshold)
  assert 0.4 < confident['fraction'] < 0.6 and confident['acc'] is not None
  first.config.train.selflabel_threshold = threshold
  caplog.clear()
  with caplog.at_level('INFO'):
    first.passes.with_pseudo_labels(first.run, steps=7)
  assert (f'{100 * confident["fraction"]:.1f}% of images above '
          f'{threshold:g}, ACC {confident["acc"]:.3f} on them; re-read at '
          'every step.') in caplog.text
  first.close()
  resumed = workflows.build_trainer(config(1), str(tmp_path / 'b'))
  assert resumed.restore_latest() and int(resumed.state.step) == 14
  resumed.train()
  _assert_same_params(straight, resumed)
  straight.close()
  resumed.close()


def test_only_clustered_rows_give_pseudo_labels():
  plain = jnp.asarray([[0.9, 0.1], [0.1, 0.9]])
  # view a, then view b (the same here)
  views = jnp.asarray([[0.6, 0.4], [0.2, 0.8], [0.6, 0.4], [0.2, 0.8]])
  config = tiny_config(selflabel_threshold=0.5, selflabel_balance=False)
  everyone = objective.self_labeling_terms(plain, views, config.train)
  first_only = objective.self_labeling_terms(plain, views, config.train,
                                        jnp.asarray([True, False]))
  np.testing.assert_allclose(everyone['self_labeling'],
                             -(np.log(0.6) + np.log(0.8)) / 2, rtol=1e-6)
  np.testing.assert_allclose(first_only['self_labeling'], -np.log(0.6),
                             rtol=1e-6)


def test_fixed_pseudo_labels_are_the_ones_the_step_trains_on():
  config = tiny_config(batch_size=64, selflabel_threshold=0.5,
                       selflabel_balance=False, selflabel_fixed=True)
  dataset = sources.load_dataset(config.dataset)
  model = models.build_model(config, dataset.channels)
  tx = optax.adam(config.train.learning_rate)
  state = step.create_train_state(model, tx, jax.random.key(0),
                                  dataset.images.shape[1:])
  mesh = parallel.make_mesh(jax.devices()[:1])
  fixed_step = step.make_train_step(model, tx, config, mesh,
                                    self_labeling=True, fixed_labels=True)
  indices = np.arange(64, dtype=np.int32)
  target = np.full((len(dataset), 10), 0.1, np.float32)

  def self_labeling_term(pseudo_labels):
    _, metrics = fixed_step(
        step.RunState(train=jax.tree.map(jnp.copy, state), target=target,
                      pseudo_labels=pseudo_labels),
        step.Batch(images=dataset.images[indices], indices=indices))
    return float(metrics['self_labeling'])

  none = np.full(len(dataset), -1, np.int32)
  assert self_labeling_term(none) == 0.0  # no label: no term
  threes, fives = none.copy(), none.copy()
  threes[indices], fives[indices] = 3, 5
  # The cross-entropy of the views towards the given labels: positive, and
  # another label gives another value. Labels outside the batch are unused.
  assert 0 < self_labeling_term(threes) != self_labeling_term(fives)
  threes[64:] = 7
  assert self_labeling_term(threes) == pytest.approx(
      self_labeling_term(np.where(np.arange(len(dataset)) < 64, 3, -1)
                         .astype(np.int32)))


@pytest.mark.slow
def test_fixed_pseudo_labels_come_from_the_stage_start_and_resume(
    tmp_path, monkeypatch):
  def config(epochs, threshold=0.5):
    # The threshold is chosen after the method's steps: a deliberate change
    # on resume.
    return tiny_config(num_epochs=2, selflabel_epochs=epochs,
                       selflabel_threshold=threshold, selflabel_fixed=True,
                       accept_changed_settings=True)
  # The model at the end of the method (14 steps) ...
  first = workflows.build_trainer(config(0), str(tmp_path / 'b'))
  first.train()
  probs = first.passes.outputs(first.state)['cluster_probs']
  first.close()
  # ... a threshold that half of its predictions pass, and their labels.
  threshold = float(np.median(probs.max(1)))
  expected = np.where(probs.max(1) > threshold, probs.argmax(1), -1)
  assert 0.4 < np.mean(expected >= 0) < 0.6
  straight = workflows.build_trainer(config(1, threshold), str(tmp_path / 'a'))
  straight.train()
  np.testing.assert_array_equal(np.asarray(straight.run.pseudo_labels),
                                expected)
  records = [json.loads(line) for line in
             (tmp_path / 'a' / 'metrics.jsonl').read_text().splitlines()]
  assert any(r.get('loss/self_labeling', 0) > 0 for r in records)
  # Resumed into the stage, stopped in its middle, resumed again: the
  # labels fixed at step 14 come back from the checkpoint of step 17.
  resumed = workflows.build_trainer(config(1, threshold), str(tmp_path / 'b'))
  assert resumed.restore_latest() and int(resumed.state.step) == 14
  monkeypatch.setattr(resumed.stop, 'stop_now',
                      lambda _: int(resumed.state.step) == 17)
  assert not resumed.train()
  resumed.close()
  again = workflows.build_trainer(config(1, threshold), str(tmp_path / 'b'))
  assert again.restore_latest() and int(again.state.step) == 17
  np.testing.assert_array_equal(np.asarray(again.run.pseudo_labels),
                                expected)
  again.train()
  _assert_same_params(straight, again)
  straight.close()
  again.close()


def test_views_cut_from_larger_images_train_every_stage(tmp_path):
  # Neighbours (their images at crop_from_size too), self-labelling (the
  # plain images resized on the device) and reconstruction (of the views).
  config = _with_neighbors(num_epochs=3, selflabel_epochs=1,
                           selflabel_threshold=0.0)
  config.dataset.crop_from_size = 16
  evaluation = workflows.train_and_evaluate(config, str(tmp_path / 'run'))
  assert evaluation.assignments.own['embedding'].shape[0] == 1797
  assert np.isfinite(evaluation.results['cluster_head']['acc'])
