"""Serving without this package: the whole predictor serialised with `jax.export`.

`export_workdir` (`--mode=export --export_dir=DIR`) writes two files a caller with plain `jax`
can use, with no Python source of this package and no recompiling of it:

  DIR/predictor.jax_exported   the bytes of `jax.export.Exported.serialize()`
  DIR/signature.json           what the function takes and returns, and how it was made

Images (`kind='image'`): `exported.call(images)` with images uint8 [b, H, W, 3] -> {'class',
'id'} int32 [b, H, W]: exactly what `Predictor.__call__` returns for those images with
example_ids 0..b-1 and the export's seed (`sampling.preprocess_images`, `sampling.sample`,
`sampling.postprocess` with config.eval.min_pixels). b is a symbolic dimension (any batch runs
without re-exporting); H, W (the canvas) and the sampler settings (steps, td, decode, seed) are
fixed at export. The weights are constants of the program, so the caller passes only images.

Video (`kind='video_step'`, a model with `model.num_cond_frames` > 0): one streaming step,
`exported.call(frame, history, frame_index)` -> {'class', 'id', 'history', 'frame_index'}: the
maps of this frame and the state for the next one, exactly `VideoPredictor.start` then `.step`
(`predict_video.sample_frame`). The state is history int32 [b, P, h, w, 2] (the masks of the P
previous frames at mask resolution, zeros before the first frame) and frame_index int32 (a
scalar: the streams of one batch advance together; 0 runs config.eval.steps DDIM steps, later
frames steps_later). A step rather than a whole clip of a fixed length: one program serves clips
of any length and live streams (a camera has no last frame), and a caller can batch, drop or
restart streams between frames; the clip program would be the same step in a `lax.scan`.

Attention: the fused kernels (cuDNN flash on GPU, Pallas flash on TPU) exist on one platform
only, so every attention layer of an export takes one portable path: the one CPU's 'auto' picks
for the encoder's token count (models/layers.py `resolve_attention` with backend 'cpu'), i.e.
the plain XLA attention ('xla') below `CHUNKED_MIN_KEYS` tokens (canvases under 512^2, e.g. the
shapes configs) and the chunked online-softmax path ('chunked') from there on (the paper's
1024^2, where the decoder's attention is as long). Both are ordinary XLA operations every
platform runs; a config that names 'xla' or 'chunked' keeps it; signature.json records the
path. On CPU the export therefore computes what `Predictor` computes, bit for bit
(tests/test_export.py).

`load(dir)` is this package's reader: it checks the two files (missing, damaged, written by a
JAX newer than the installed one, not lowered for this platform) before deserialising, and each
error names the file and the fix.
"""

import dataclasses
import functools
import json
import logging
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pix2seq_d_jax import checkpoint
from pix2seq_d_jax import compile_options
from pix2seq_d_jax import predict_video
from pix2seq_d_jax import sampling
from pix2seq_d_jax.formats import coco_format
from pix2seq_d_jax.models import layers
from pix2seq_d_jax.models import pix2seq_d

EXPORTED_FILE = 'predictor.jax_exported'
SIGNATURE_FILE = 'signature.json'
FORMAT = 'pix2seq_d_jax.export/1'
KINDS = ('image', 'video_step')
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')
BATCH = 'b'                          # the name of the symbolic batch dimension in signature.json


def serialization_version() -> int | None:
  """The newest `Exported` serialisation schema the installed JAX writes and reads (JAX keeps no
  public name for it; None when this JAX does not have the private one)."""
  # pylint: disable-next=g-import-not-at-top
  from jax._src.export import serialization  # lazy: private module, read only here
  return getattr(serialization, '_SERIALIZATION_VERSION', None)


def _version_tuple(text: str) -> tuple[int, ...]:
  """'0.10.2' -> (0, 10, 2); a suffix such as '.dev2026' is ignored."""
  return tuple(int(p) for p in re.findall(r'\d+', text.split('.dev')[0].split('rc')[0])[:3])


def portable_attention(config: ml_collections.ConfigDict) -> str:
  """'xla' or 'chunked': the attention path an export traces (see the module docstring)."""
  impl = config.model.attention
  if impl in ('xla', 'chunked'):
    return impl
  e = config.model.encoder
  # The encoder reads the ResNet-C4 features: one token per 16 x 16 pixels of the canvas.
  tokens = (config.model.image_size[0] // 16) * (config.model.image_size[1] // 16)
  return layers.resolve_attention('auto', 'cpu', jnp.float32, tokens, e.dim // e.num_heads)


def _kind(config: ml_collections.ConfigDict) -> str:
  return 'video_step' if config.model.num_cond_frames else 'image'


def _spec(name: str, dtype, shape) -> dict:
  return {'name': name, 'dtype': np.dtype(dtype).name,
          'shape': [BATCH if jax.export.is_symbolic_dim(d) else int(d) for d in shape]}


def parse_platforms(text) -> tuple[str, ...]:
  """'cpu,cuda' (or a sequence) -> ('cpu', 'cuda'), checked against PLATFORMS."""
  names = [p.strip().lower() for p in (text.split(',') if isinstance(text, str) else text)]
  names = [p for p in names if p]
  bad = [p for p in names if p not in PLATFORMS]
  if bad or not names:
    raise ValueError(f'--export_platforms={text!r}: unknown {bad or "empty list"}; valid: '
                     f'{",".join(PLATFORMS)} (comma-separated, e.g. cpu,cuda,tpu).')
  return tuple(dict.fromkeys(names))


def parse_canvas(text, image_size) -> tuple[int, int]:
  """'H,W' (or None: the model's image size) -> (H, W) of the images the export takes."""
  if text is None or text == '':
    return tuple(int(s) for s in image_size)
  parts = text.split(',') if isinstance(text, str) else list(text)
  try:
    size = tuple(int(p) for p in parts)
  except ValueError:
    size = ()
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f'--export_canvas={text!r}: pass the input height and width as H,W, e.g. '
                     f'{image_size[0]},{image_size[1]} (the model\'s image size, the default).')
  return size


def _lower(fn, args, platforms: tuple[str, ...]) -> tuple[jax.export.Exported, dict]:
  """jax.export for every platform at once; a platform the installed JAX cannot lower is left
  out with a warning naming it and its error (CPU must lower)."""
  try:
    return jax.export.export(jax.jit(fn), platforms=platforms)(*args), {}
  except Exception as err:  # pylint: disable=broad-except
    if len(platforms) == 1:
      raise
    first = err
  skipped, kept = {}, []
  for p in platforms:
    try:
      jax.export.export(jax.jit(fn), platforms=(p,))(*args)
      kept.append(p)
    except Exception as err:  # pylint: disable=broad-except
      skipped[p] = f'{type(err).__name__}: {err}'.splitlines()[0][:300]
  if 'cpu' in skipped or not kept:
    raise RuntimeError(f'jax.export cannot lower the predictor for {list(platforms)} '
                       f'({first}).') from first
  for p, why in skipped.items():
    logging.warning('The installed JAX %s cannot lower the predictor for %s (%s); exporting for '
                    '%s only. Upgrade jax (and install its %s plugin) to include it.',
                    jax.__version__, p, why, ','.join(kept), p)
  return jax.export.export(jax.jit(fn), platforms=tuple(kept))(*args), skipped


def export_predictor(config: ml_collections.ConfigDict, variables: dict, categories=None, *,
                     canvas: tuple[int, int] | None = None, steps: int | None = None,
                     steps_later: int | None = None, td: float | None = None,
                     decode: str | None = None, seed: int = 0,
                     platforms=DEFAULT_PLATFORMS) -> tuple[jax.export.Exported, dict]:
  """(Exported, signature dict) of the predictor of `config` with `variables`.

  Args:
    config: the workdir's config; variables: {'params', 'batch_stats'} (EMA by default).
    categories: COCO-style dicts written into the signature (class c is categories[c - 1]).
    canvas: (H, W) of the input images (default config.model.image_size).
    steps, steps_later, td, decode: the sampler settings (default config.eval's, checked by
      `sampling.EvalOptions.from_config`); steps_later is read for video only.
    seed: the noise seed (`Predictor`'s `seed`); platforms: see `parse_platforms`.
  """
  kind = _kind(config)
  opts = sampling.EvalOptions.from_config(config, steps=steps, steps_later=steps_later, td=td,
                                          decode=decode, where='--mode=export: ')
  platforms = parse_platforms(platforms)
  size = parse_canvas(canvas, config.model.image_size)
  attention = portable_attention(config)
  traced = config.copy_and_resolve_references()
  traced.model.attention = attention
  model = pix2seq_d.build_model(traced)
  settings = sampling.SampleSettings.from_config(traced)
  image_size = tuple(config.model.image_size)
  mask_size = tuple(config.model.mask_size)
  unpad = sampling.fit_size(size, image_size)
  # Plain host arrays: a program's constants, whatever devices the checkpoint was restored to.
  weights = jax.tree.map(np.asarray, jax.device_get(variables))
  post = dict(image_size=image_size, out_size=size, num_classes=settings.num_classes,
              max_instances=settings.max_instances)

  def runtime(b):
    # Through an optimisation barrier, as `Predictor` passes them as arguments: XLA would
    # otherwise fold the weights' and the time grid's arithmetic at compile time (its constant
    # folder rounds some functions differently from the compiled code), and the maps would no
    # longer equal Predictor's bit for bit.
    v, key, t = jax.lax.optimization_barrier(
        (weights, jax.random.PRNGKey(seed), jnp.float32(opts.td)))
    ids = jnp.arange(b, dtype=jnp.int32)
    sizes = lambda s: jnp.broadcast_to(jnp.asarray(s, jnp.int32), (b, 2))
    return v, key, t, ids, sizes(size), sizes(unpad)

  b, = jax.export.symbolic_shape(BATCH)
  image_spec = jax.ShapeDtypeStruct((b, *size, 3), jnp.uint8)
  if kind == 'image':
    sample = functools.partial(sampling.sample, model=model, settings=settings,
                               steps=opts.steps, decode=opts.decode)

    def fn(images):
      v, key, t, ids, orig, unp = runtime(images.shape[0])
      masks = sample(v, sampling.preprocess_images(images, image_size), ids, key, t)
      cls, inst = sampling.postprocess(masks, orig, unp, min_pixels=config.eval.min_pixels,
                                       **post)
      return {'class': cls, 'id': inst}
    args = (image_spec,)
    inputs = [_spec('images', jnp.uint8, image_spec.shape)]
    outputs = [_spec(n, jnp.int32, (b, *size)) for n in ('class', 'id')]
  else:
    step = functools.partial(predict_video.sample_frame, model=model, settings=settings,
                             steps_first=opts.steps, steps_later=opts.steps_later,
                             decode=opts.decode)

    def fn(frame, history, frame_index):
      v, key, t, ids, orig, unp = runtime(frame.shape[0])
      masks = step(v, sampling.preprocess_images(frame, image_size), history, frame_index, ids,
                   key, t)
      cls, inst = sampling.postprocess(masks, orig, unp, **predict_video.VIDEO_RULES, **post)
      return {'class': cls, 'id': inst, 'history': predict_video.push_history(history, masks),
              'frame_index': frame_index + 1}
    history = jax.ShapeDtypeStruct((b, model.num_cond_frames, *mask_size, 2), jnp.int32)
    index = jax.ShapeDtypeStruct((), jnp.int32)
    args = (image_spec, history, index)
    inputs = [_spec('frame', jnp.uint8, image_spec.shape),
              _spec('history', jnp.int32, history.shape), _spec('frame_index', jnp.int32, ())]
    outputs = [_spec(n, jnp.int32, (b, *size)) for n in ('class', 'id')] + [
        _spec('history', jnp.int32, history.shape), _spec('frame_index', jnp.int32, ())]

  exported, skipped = _lower(fn, args, platforms)
  signature = {
      'format': FORMAT, 'kind': kind,
      'inputs': inputs, 'outputs': outputs,
      'call': ('exported.call(images) -> {"class", "id"}' if kind == 'image' else
               'exported.call(frame, history, frame_index) -> {"class", "id", "history", '
               '"frame_index"}'),
      'platforms': list(exported.platforms),
      'platforms_not_lowered': skipped,
      'steps': opts.steps, **({'steps_later': opts.steps_later} if kind != 'image' else {}),
      'td': opts.td, 'decode': opts.decode, 'seed': int(seed),
      'example_ids': f'0..{BATCH}-1',
      'min_pixels': int(config.eval.min_pixels) if kind == 'image' else 0,
      'attention': attention,
      'canvas': list(size), 'image_size': list(image_size), 'mask_size': list(mask_size),
      'num_cond_frames': int(model.num_cond_frames),
      'jax_version': jax.__version__,
      'calling_convention_version': int(exported.calling_convention_version),
      'serialization_version': serialization_version(),
      'categories': [{'id': c['id'], 'name': c['name'], 'isthing': int(c.get('isthing', 0))}
                     for c in (categories or [])],
  }
  return exported, signature


def write(export_dir, exported: jax.export.Exported, signature: dict) -> None:
  """Writes DIR/predictor.jax_exported and DIR/signature.json, each through a temporary file (a
  reader never sees half a file); the program first, so a signature always has its program."""
  out = pathlib.Path(export_dir)
  out.mkdir(parents=True, exist_ok=True)
  path = out / EXPORTED_FILE
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(bytes(exported.serialize()))
  tmp.replace(path)
  coco_format.write_json(out / SIGNATURE_FILE, signature, indent=1)


def export_workdir(workdir, export_dir, step: int | None = None, use_ema: bool = True,
                   **options) -> dict:
  """`--mode=export`: the workdir's newest (or `step`) checkpoint exported to `export_dir`, with
  the config saved in the workdir (it describes its checkpoint, as for `--mode=predict`; the
  --export_* flags, not --config.eval.*, set the sampler). `options`: those of
  `export_predictor`. Returns the signature with the checkpoint's step."""
  config, state, meta = checkpoint.load_for_inference(workdir, step)
  exported, signature = export_predictor(config, state.variables(use_ema),
                                         checkpoint.load_categories(workdir), **options)
  signature['checkpoint_step'] = int(meta.get('step', step or 0)) if meta else step
  signature['use_ema'] = bool(use_ema)
  write(export_dir, exported, signature)
  logging.info('Exported the %s predictor of %s (step %s) for %s to %s.', signature['kind'],
               workdir, signature['checkpoint_step'], ','.join(signature['platforms']),
               export_dir)
  return signature


def host_platform() -> str:
  """The platform name jax.export uses for this host's default backend ('cpu', 'cuda', ...)."""
  backend = jax.default_backend()
  if backend == 'gpu':
    version = getattr(jax.devices()[0].client, 'platform_version', '')
    return 'rocm' if 'rocm' in version.lower() else 'cuda'
  return backend


@dataclasses.dataclass(frozen=True)
class ExportedPredictor:
  """A loaded export: `exported` (jax.export.Exported), its `signature` dict and `path`.
  Calling it runs `exported.call` on the given arrays (images, or frame, history, frame_index),
  compiled as this package compiles its own samplers (`compile_options.sampler`)."""
  exported: jax.export.Exported
  signature: dict
  path: pathlib.Path

  @property
  def categories(self) -> list[dict]:
    return self.signature['categories']

  @functools.cached_property
  def _call(self):
    return jax.jit(self.exported.call, compiler_options=compile_options.sampler())

  def __call__(self, *args) -> dict:
    specs = self.signature['inputs']
    if len(args) != len(specs):
      raise TypeError(f'{self.path / EXPORTED_FILE} takes {[s["name"] for s in specs]}, got '
                      f'{len(args)} arguments.')
    for arg, spec in zip(args, specs):
      arg = np.asarray(arg)
      fixed = [d for d in spec['shape'] if d != BATCH]
      if (arg.dtype.name != spec['dtype'] or arg.ndim != len(spec['shape'])
          or list(arg.shape[len(spec['shape']) - len(fixed):]) != fixed):
        raise ValueError(f'{self.path / SIGNATURE_FILE}: {spec["name"]} must be {spec["dtype"]} '
                         f'{spec["shape"]}, got {arg.dtype} {list(arg.shape)}; resize the '
                         f'input to the canvas {self.signature["canvas"]} or re-export with '
                         '--export_canvas=H,W.')
    return {k: np.asarray(v) for k, v in self._call(*args).items()}


def load(export_dir, platform: str | None = None) -> ExportedPredictor:
  """Reads an export written by `write`, checked for this host (or `platform`).

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: signature.json is damaged or not this format; the export needs a newer JAX than
      the installed one; predictor.jax_exported cannot be deserialised; the export was not
      lowered for the platform.
  """
  out = pathlib.Path(export_dir)
  sig_path, exp_path = out / SIGNATURE_FILE, out / EXPORTED_FILE
  redo = ('write both again with python -m pix2seq_d_jax.main --mode=export '
          f'--export_dir={out} (same --config, --workdir)')
  for path in (sig_path, exp_path):
    if not path.is_file():
      raise FileNotFoundError(f'{path} is missing: {out} is not a complete export; copy the '
                              f'whole folder, or {redo}.')
  try:
    signature = json.loads(sig_path.read_text())
    found = signature.get('format') if isinstance(signature, dict) else None
    if found != FORMAT:
      raise ValueError(f'"format" is {found!r}, not {FORMAT!r}')
  except (ValueError, OSError) as err:
    raise ValueError(f'{sig_path} cannot be read ({err}): it is damaged or not a '
                     f'pix2seq_d_jax export signature; {redo}.') from err
  exported_with = str(signature.get('jax_version', '?'))
  installed = jax.__version__
  cc = signature.get('calling_convention_version')
  sv, sv_here = signature.get('serialization_version'), serialization_version()
  low = jax.export.minimum_supported_calling_convention_version
  high = jax.export.maximum_supported_calling_convention_version
  problems = []
  if _version_tuple(exported_with) > _version_tuple(installed):
    problems.append(f'it was exported with jax {exported_with}, newer than the installed '
                    f'jax {installed}')
  if not isinstance(cc, int) or not low <= cc <= high:
    problems.append(f'calling_convention_version={cc!r} is outside the {low}..{high} the '
                    f'installed jax {installed} runs')
  if isinstance(sv, int) and isinstance(sv_here, int) and sv > sv_here:
    problems.append(f'serialization_version={sv} is newer than the {sv_here} the installed jax '
                    f'{installed} reads')
  if problems:
    raise ValueError(f'{sig_path}: {"; ".join(problems)}. Install jax=={exported_with} (or '
                     f'newer) to run it, or re-export with the installed jax: {redo}.')
  try:
    exported = jax.export.deserialize(bytearray(exp_path.read_bytes()))
  except Exception as err:  # pylint: disable=broad-except
    raise ValueError(f'{exp_path} cannot be deserialised ({type(err).__name__}: '
                     f'{str(err)[:200]}): the file is damaged or truncated; copy it again '
                     f'from the export, or {redo}.') from err
  if list(exported.platforms) != list(signature.get('platforms', [])):
    raise ValueError(f'{exp_path} was lowered for {list(exported.platforms)} but {sig_path} says '
                     f'{signature.get("platforms")}: the two files come from different exports; '
                     f'copy both from one folder, or {redo}.')
  platform = platform or host_platform()
  if platform not in exported.platforms:
    raise ValueError(f'{exp_path} was exported for {",".join(exported.platforms)}, not for '
                     f'{platform} (this host); {redo} --export_platforms='
                     f'{",".join([*exported.platforms, platform])}.')
  return ExportedPredictor(exported, signature, out)
