"""benchmarks/step_profile.py: instructions matched to their sources, time by part and pass."""

import importlib.util

from conftest import REPO

_spec = importlib.util.spec_from_file_location('step_profile',
                                               REPO / 'benchmarks' / 'step_profile.py')
step_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(step_profile)

HLO = '''HloModule jit_train_step

%fused_computation.1 (p: f32[2]) -> f32[2] {
  %inner.1 = f32[2]{0} negate(%p), metadata={op_name="jit(train_step)/inner"}
}

ENTRY %main (a: f32[2]) -> f32[2] {
  %ynn_fusion.3 = f32[8,16]{1,0} fusion(%a), kind=kCustom, metadata={op_name="jit(train_step)/jvp(Pix2SeqD.encode)/backbone/stage3_block5/Conv_0/conv_general_dilated" stack_frame_id=1}
  %ynn_fusion.4 = f32[8,16]{1,0} fusion(%a), kind=kCustom, metadata={op_name="jit(train_step)/transpose(jvp(Pix2SeqD.decode))/decoder/up0_block1/conv0/dot_general"}
  %copy.7 = f32[2]{0} copy(%a)
  ROOT %add_select_fusion.2 = f32[64]{0} fusion(%a), kind=kLoop, metadata={op_name="jit(train_step)/jit(_where)/select_n"}
}
'''


def test_instruction_sources_reads_the_entry_computation_only():
  sources = step_profile.instruction_sources(HLO)
  assert set(sources) == {'ynn_fusion.3', 'ynn_fusion.4', 'copy.7', 'add_select_fusion.2'}
  assert sources['copy.7'] == ''
  assert sources['add_select_fusion.2'] == 'jit(train_step)/jit(_where)/select_n'


def test_part_of_names_pass_and_module_path():
  part = step_profile.part_of
  assert part('jit(train_step)/jvp(Pix2SeqD.encode)/backbone/stage3_block5/Conv_0/x', 2) == (
      'forward', 'backbone/stage3_block')
  assert part('jit(train_step)/transpose(jvp(Pix2SeqD.decode))/decoder/up0_block1/conv0/y',
              2) == ('backward', 'decoder/up0_block')
  assert part('jit(train_step)/transpose(jvp(Pix2SeqD.decode))/decoder/middle/layer3/z', 3) == (
      'backward', 'decoder/middle/layer')
  assert part('jit(train_step)/jit(_where)/select_n', 2) == ('forward', 'step/jit(_where)')
  assert part('', 2) == ('forward', 'unattributed')


def test_summarize_sums_per_step_by_part_and_skips_runtime_spans():
  sources = step_profile.instruction_sources(HLO)
  ev = lambda name, dur, tid: {'ph': 'X', 'name': name, 'dur': dur, 'tid': tid}
  events = [ev('ynn_fusion.3', 3000, 1), ev('ynn_fusion.3', 1000, 2),   # one op, two tasks
            ev('ynn_fusion.4', 2000, 1), ev('copy.7', 1000, 2),
            ev('add_select_fusion.2', 1000, 1),
            ev('ThunkExecutor::Execute', 50000, 1), {'ph': 'M', 'name': 'thread_name'},
            {'ph': 'X', 'dur': 5, 'tid': 1}]                          # no name: skipped
  out = step_profile.summarize(events, sources, steps=2, depth=2, top=2)
  assert out['op_ms_per_step'] == 4.0
  assert out['tasks_per_step'] == 2
  assert out['thread_busy_ms_per_step'] == [3.0, 1.0]
  parts = {(r['pass'], r['part']): r['ms'] for r in out['by_part']}
  assert parts == {('forward', 'backbone/stage3_block'): 2.0, ('backward', 'decoder/up0_block'): 1.0,
                   ('forward', 'unattributed'): 0.5, ('forward', 'step/jit(_where)'): 0.5}
  assert sum(r['share'] for r in out['by_part']) == 1.0
  assert [r['name'] for r in out['top_instructions']] == ['ynn_fusion.3', 'ynn_fusion.4']


def test_importing_the_module_leaves_xla_flags_alone():
  """Only the script switches XLA:CPU's trace events on (the test process's flags are its own)."""
  import os  # pylint: disable=g-import-not-at-top
  assert 'xprof_traceme' not in os.environ.get('XLA_FLAGS', '')
