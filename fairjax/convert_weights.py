"""Converts torchvision weights into fairjax's native format, so later runs need no torch.

Usage::

  python -m fairjax.convert_weights IN OUT [--model NAME]

``IN`` is a torchvision ``state_dict`` (``.pth``, which needs torch, or ``.safetensors``);
``OUT`` is written as a safetensors file with fairjax leaf-path keys and Flax layouts (format
described in ``fairjax.models.pretrained``). ``--model`` defaults to the architecture recognised
from the key names. Bad input prints one line to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fairjax.models import pretrained


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line, no usage block
    print(f"convert_weights: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def convert(
  in_path: str | os.PathLike, out_path: str | os.PathLike, model: str | None = None
) -> str:
  """Writes the fairjax-native file ``out_path`` from the weights file ``in_path``.

  Args:
    in_path: a torchvision ``state_dict`` (``.pth`` / ``.safetensors``) or a native file.
    out_path: the ``.safetensors`` file to write (replaced atomically if it exists).
    model: one of ``pretrained.PRETRAINED_MODELS``; ``None`` recognises it from the file.

  Returns:
    The model name written into the file's metadata.

  Raises:
    pretrained.PretrainedError: bad input, with a one-line message.
  """
  from safetensors.numpy import save_file

  in_path, out_path = os.fspath(in_path), os.fspath(out_path)
  if os.path.abspath(in_path) == os.path.abspath(out_path):
    raise pretrained.PretrainedError(f"{out_path}: OUT must differ from IN")
  read = pretrained._read(in_path)
  name = model
  if name is None:
    name = pretrained._detect(in_path, *read)
    if name not in pretrained.PRETRAINED_MODELS:
      what = f"it looks like {name}" if name else "its keys match no known architecture"
      raise pretrained.PretrainedError(
        f"{in_path}: cannot tell which supported model the weights belong to ({what}); pass "
        f"--model NAME, one of {', '.join(pretrained.PRETRAINED_MODELS)}"
      )
  pretrained._check_name(name)
  flat, file_format = pretrained._read_canonical(name, in_path, read)
  head = flat[f"params/{pretrained._HEAD[name]}/kernel"]
  metadata = {
    "format": pretrained.NATIVE_FORMAT,
    "format_version": pretrained.NATIVE_FORMAT_VERSION,
    "model": name,
    "num_classes": str(head.shape[1]),
    "source": os.path.basename(in_path),
    "source_format": file_format,
  }
  tmp = f"{out_path}.tmp-{os.getpid()}"
  try:
    save_file(flat, tmp, metadata=metadata)
    os.replace(tmp, out_path)
  except OSError as e:
    raise pretrained.PretrainedError(f"{out_path}: cannot write it ({e.strerror})") from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return name


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the exit status (0, or 2 on bad input)."""
  parser = _Parser(prog="python -m fairjax.convert_weights", description=__doc__.split("\n")[0])
  parser.add_argument("input", metavar="IN", help="torchvision state_dict (.pth/.safetensors)")
  parser.add_argument("output", metavar="OUT", help="fairjax-native .safetensors to write")
  parser.add_argument(
    "--model",
    choices=pretrained.PRETRAINED_MODELS,
    default=None,
    help="architecture (default: recognised from the key names)",
  )
  args = parser.parse_args(argv)
  try:
    name = convert(args.input, args.output, args.model)
  except pretrained.PretrainedError as e:
    print(f"convert_weights: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.output} ({name}, fairjax format {pretrained.NATIVE_FORMAT_VERSION})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
