"""Experiment parameters: read params.yaml, validate it, report problems a user can act on.

`load_params(path)` parses YAML safely (duplicate keys rejected), validates against
`params_schema.yaml` (JSON Schema 2020-12, the same file Snakemake's `validate` uses), then checks
rules that span several keys (`cross_field_problems`). Every problem becomes one line naming the key
path, the offending value and what is allowed; `ParamsError` carries them all. `cli_main` turns
`UserError`s into `error: <message>` on stderr and exit status 2 for pipeline entry points.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import yaml
from jsonschema import Draft202012Validator, ValidationError, validators

SCHEMA_PATH = Path(__file__).with_name("params_schema.yaml")
PYTHIA_TOKENIZER_SIZE = 50277  # tokens in EleutherAI/pythia-70m's tokenizer (its embedding has 50304 rows)
MAX_VALUES = 10_000  # values params.yaml may hold once YAML aliases are expanded (it has about 150)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """An error the user fixes by changing parameters or inputs; printed without a traceback.
    `exit_code` is what the pipeline entry point exits with (2 unless a subclass says otherwise)."""

    exit_code = 2


class ParamsError(UserError, ValueError):
    """Invalid parameters. `problems` holds one line per problem: key path, value, what is allowed."""

    def __init__(self, problems: str | list[str], source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = head + self.problems[0]
        else:
            message = f"{head}{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _strict_int(_checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The parameter schema (parsed params_schema.yaml)."""
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    # integer means a YAML integer: 128.0 is rejected (plain JSON Schema would accept it)
    cls = validators.extend(
        Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_int))
    return cls(schema())


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read, validate and return the parameters in `path`; raise ParamsError naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError("file not found (run from the repository root or pass --params)", str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"cannot read: {e}", str(path)) from None
    loader = _UniqueKeyLoader(text)
    try:  # yaml.load, with the expansion of aliases and merge keys checked before anything is built
        node = loader.get_single_node()
        _check_expansion(node, lambda n: [x for pair in n.value for x in pair] if isinstance(n, yaml.MappingNode)
                         else n.value if isinstance(n, yaml.SequenceNode) else [])
        params = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise ParamsError(f"invalid YAML: {' '.join(str(e).split())}", str(path)) from None
    except ParamsError as e:
        raise ParamsError(e.problems, str(path)) from None
    finally:
        loader.dispose()
    try:
        return validate_params(params)
    except ParamsError as e:
        raise ParamsError(e.problems, str(path)) from None


def validate_params(d: Any) -> dict:
    """Return `d` unchanged if it is a valid parameter dict; else raise ParamsError."""
    if not isinstance(d, dict):
        sections = ", ".join(schema()["required"])
        raise ParamsError(f"expected a mapping with the sections {sections}; got {_kind(d)}")
    _check_expansion(d, lambda v: list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else [])
    errors = list(_validator().iter_errors(d))
    typed = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    problems: list[str] = []
    for e in errors:
        if e.validator in ("type", "additionalProperties", "required") or tuple(e.absolute_path) not in typed:
            problems += _schema_problems(e)
    problems += [f"{_path(p)}: {v!r} is not a finite number" for p, v in _walk(d)
                 if isinstance(v, float) and not math.isfinite(v)]
    if not problems:
        problems = cross_field_problems(d)
    if problems:
        raise ParamsError(list(dict.fromkeys(problems)))
    return d


def _check_expansion(root: Any, children: Callable[[Any], list]) -> None:
    """Raise ParamsError if `root` (a YAML node or the loaded value), written out without aliases and merge
    keys, holds more than MAX_VALUES values or contains itself: a "billion laughs" document is refused before
    it is built or validated. Shared parts are counted once per use, each computed once."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key, kids = id(node), children(node)
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size.get(id(k), 1) for k in kids)
        elif key in open_:
            raise ParamsError("a YAML alias makes the parameters contain themselves; allowed: aliases of "
                              "values defined earlier, never of an enclosing mapping or list")
        elif key not in size and kids:
            open_.add(key)
            stack += [(node, True)] + [(k, False) for k in kids]
    total = size.get(id(root), 1)
    if total > MAX_VALUES:
        raise ParamsError(f"YAML aliases or merge keys expand the parameters to {total:,} values; allowed: at most "
                          f"{MAX_VALUES:,} (write the values out instead of nesting aliases)")


def _walk(obj: Any) -> Iterable[tuple[tuple, Any]]:
    """(path, leaf) for every leaf of nested dicts and lists; each container once (YAML aliases may share
    or nest a container inside itself)."""
    stack, seen = [((), obj)], set()
    while stack:
        path, node = stack.pop()
        if not isinstance(node, (dict, list)):
            yield path, node
        elif id(node) not in seen:
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            stack += [(path + (k,), v) for k, v in items]


def _path(parts: Iterable[Any]) -> str:
    """Key path as written in messages: model.memory.top_k, train.seeds[1]."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) and not isinstance(p, bool) else (f".{p}" if out else str(p))
    return out


def _kind(v: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a mapping", type(None): "empty (null)"}
    return names.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _range(sub: dict) -> str:
    lo = [f"{sub[k]} {op}" for k, op in (("minimum", "<="), ("exclusiveMinimum", "<")) if k in sub]
    hi = [f"{op} {sub[k]}" for k, op in (("maximum", "<="), ("exclusiveMaximum", "<")) if k in sub]
    return " ".join(lo[:1] + ["value"] + hi[:1])


def _allowed(sub: dict) -> str:
    """What a (sub)schema allows, in words."""
    if "enum" in sub:
        return ", ".join(map(str, sub["enum"]))
    if "anyOf" in sub:
        return ", ".join(_allowed(s) for s in sub["anyOf"])
    if "pattern" in sub:
        return f"a string matching {sub['pattern']}"
    return sub.get("description", "see params_schema.yaml")


def _schema_problems(e: ValidationError) -> list[str]:
    """One line per problem in a jsonschema error, naming key path, value and what is allowed."""
    path, v, sub, kind = _path(e.absolute_path), e.instance, e.schema, e.validator
    where = path or "the top level"
    if kind == "additionalProperties":
        allowed = ", ".join(sub.get("properties", {}))
        return [f"unknown key {_path([*e.absolute_path, k])!r} in {where}; allowed: {allowed}"
                for k in v if k not in sub.get("properties", {})]
    if kind == "required":
        props = sub.get("properties", {})
        return [f"missing key {_path([*e.absolute_path, k])} in {where} ({props.get(k, {}).get('description', '')})"
                for k in e.validator_value if k not in v]
    if kind == "type":
        msg = f"{path}: {_show(v)} is {_kind(v)}; expected {e.validator_value}"
        if "enum" in sub:
            msg += f"; allowed: {_allowed(sub)}"
        if isinstance(v, bool) and {"on", "off"} & set(sub.get("enum", [])):
            msg += ' (YAML reads unquoted on/off/yes/no as booleans: write "on" or "off" in quotes)'
        if isinstance(v, str) and e.validator_value in ("number", "integer") and _is_number(v):
            plain = v.strip() if re.fullmatch(r"[+-]?\d+", v.strip()) else repr(float(v))
            msg += f" (write it as a plain number: {plain}; PyYAML reads forms like 1e-4 as strings, 1.0e-4 works)"
        return [msg]
    if kind in ("enum", "anyOf"):
        return [f"{path}: {_show(v)} is not allowed; allowed: {_allowed(sub)}"]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return [f"{path}: {_show(v)} is out of range; allowed: {_range(sub)}"]
    if kind == "minItems":
        items = f" of {_allowed(sub['items'])}" if "enum" in sub.get("items", {}) else ""
        return [f"{path}: {_show(v)} has too few items; allowed: at least {e.validator_value}{items}"]
    if kind == "uniqueItems":
        dups = sorted({repr(x) for x in v if v.count(x) > 1})
        return [f"{path}: {_show(v)} repeats {', '.join(dups)}; allowed: each value once"]
    if kind == "pattern":
        return [f"{path}: {_show(v)} does not match {sub['pattern']} ({sub.get('description', '')})"]
    if kind in ("minLength", "maxLength"):
        bound = "at least" if kind == "minLength" else "at most"
        return [f"{path}: {_show(v)} has the wrong length; allowed: {bound} {e.validator_value} characters"]
    return [f"{path}: {e.message}"]


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def cross_field_problems(p: dict) -> list[str]:
    """Rules spanning several keys of a schema-valid parameter dict; one line per broken rule."""
    data, mem_, model, train, ev = p["data"], p["memories"], p["model"], p["train"], p["eval"]
    mem = model["memory"]
    n, protocol = mem["num_memories"], train["protocol"]
    out: list[str] = []
    if mem["top_k"] > n:
        out.append(f"model.memory.top_k: {mem['top_k']} exceeds model.memory.num_memories ({n}); "
                   f"allowed: 0 (mix all) or 1..{n}")
    if mem_["num_memories"] != n:
        out.append(f"memories.num_memories: {mem_['num_memories']} differs from model.memory.num_memories ({n}); "
                   "allowed: the same value in both")
    if len(mem_["builder_domains"]) not in (0, mem_["num_memories"]):
        out.append(f"memories.builder_domains: {len(mem_['builder_domains'])} names for {mem_['num_memories']} "
                   f"slots; allowed: [] (the first memories.num_memories domains alphabetically) or exactly "
                   f"memories.num_memories ({mem_['num_memories']}) names")
    if mem_["builder_padding"] == "pad_to_builder_tokens" and mem_["builder_text_tokens"] > mem_["builder_tokens"]:
        out.append(f"memories.builder_text_tokens: {mem_['builder_text_tokens']} exceeds memories.builder_tokens "
                   f"({mem_['builder_tokens']}) with builder_padding 'pad_to_builder_tokens'; "
                   f"allowed: 1..{mem_['builder_tokens']}")
    if model["hidden"] % model["heads"]:
        out.append(f"model.hidden: {model['hidden']} is not divisible by model.heads ({model['heads']}); "
                   f"allowed: a multiple of {model['heads']}")
    else:
        d = model["hidden"] // model["heads"]
        if d % mem["encoder_heads"]:
            divisors = ", ".join(str(k) for k in range(1, d + 1) if d % k == 0)
            out.append(f"model.memory.encoder_heads: {mem['encoder_heads']} does not divide the head size "
                       f"model.hidden / model.heads = {d}; allowed: {divisors}")
        if int(d * model["rotary_pct"]) % 2:
            out.append(f"model.rotary_pct: {model['rotary_pct']} gives int({d} * {model['rotary_pct']}) = "
                       f"{int(d * model['rotary_pct'])} rotary dims; allowed: a value giving an even count")
    if model["memory_layer"] >= model["layers"]:
        out.append(f"model.memory_layer: {model['memory_layer']} is not a layer index; "
                   f"allowed: 0..{model['layers'] - 1} (model.layers = {model['layers']})")
    if protocol == "selection":
        # model.memory.state 'shared' and train.eval_memory 'off' are v1's flaws on this protocol (one bank
        # for the batch; validation from an empty bank): allowed, so that the ablation can measure them
        for key, value, allowed, why in (
            ("model.memory.assignment", mem["assignment"], "explicit", "each context segment goes to its own slot"),
            ("data.split", data["split"] if mem_["task"] == "continuation" else "documents", "documents",
             "continuation examples are built from whole documents per split"),
        ):
            if value != allowed:
                out.append(f"{key}: {value!r} is not allowed with train.protocol 'selection' ({why}); "
                           f"allowed: {allowed}")
        if n < 2:
            out.append(f"model.memory.num_memories: {n} leaves nothing to select; allowed with train.protocol "
                       "'selection': >= 2")
        if mem_["task"] == "recall":
            from multimem.data.recall import RecallSpec

            out += RecallSpec.from_params(mem_).problems(model["vocab_size"])
    else:
        for key, value, only, allowed in (
            ("model.memory.assignment", mem["assignment"], "explicit", "round_robin"),
            ("train.write_grad", train["write_grad"], "differentiable", "detached"),
        ):
            if value == only:
                out.append(f"{key}: {value!r} requires train.protocol 'selection' (got 'lm'); "
                           f"allowed with 'lm': {allowed}")
        if train["init_from"] == "oracle":
            out.append("train.init_from: 'oracle' needs the true slot, which only train.protocol 'selection' has; "
                       "allowed with 'lm': base")
        if "oracle" in train["variants"]:
            others = ", ".join(v for v in train["variants"] if v != "oracle") or "memory_norm"
            out.append("train.variants: 'oracle' needs the true slot, which only train.protocol 'selection' has; "
                       f"allowed with 'lm': {others}")
    out += _data_problems(data, mem_, model)
    for k in ev["top_k"]:
        if k > n:
            out.append(f"eval.top_k: {k} exceeds model.memory.num_memories ({n}); allowed: 1..{n}")
    if ev["report_split"] == "test" and (data["split"] != "documents" or data["test_fraction"] == 0):
        out.append(f"eval.report_split: 'test' needs a test split (data.split 'documents' and data.test_fraction > 0; "
                   f"got {data['split']!r}, {data['test_fraction']}); allowed: val")
    if ev["report_split"] == "test" and protocol == "selection" and mem_["examples_test"] == 0:
        out.append("memories.examples_test: 0 with eval.report_split 'test' and train.protocol 'selection'; "
                   "allowed: >= 1")
    if p["pretrain"]["init"] == "pretrain" and p["pretrain"]["epochs"] == 0:
        out.append("pretrain.epochs: 0 with pretrain.init 'pretrain' trains nothing; allowed: >= 1 "
                   "(or pretrain.init 'scratch')")
    if p["pretrain"]["init"].startswith("hf:"):
        out += _hf_problems(p["pretrain"]["init"][3:], model)
    return out


def _data_problems(data: dict, mem_: dict, model: dict) -> list[str]:
    """Rules on the data section (and the vocabulary it implies)."""
    out: list[str] = []
    if data["tokenizer"] == "bpe" and data["vocab_size"] > model["vocab_size"]:
        out.append(f"data.vocab_size: {data['vocab_size']} exceeds model.vocab_size ({model['vocab_size']}); "
                   f"allowed with tokenizer bpe: <= {model['vocab_size']}")
    if data["tokenizer"] == "pythia" and model["vocab_size"] < PYTHIA_TOKENIZER_SIZE:
        out.append(f"model.vocab_size: {model['vocab_size']} is smaller than the pythia tokenizer "
                   f"({PYTHIA_TOKENIZER_SIZE} tokens); allowed: >= {PYTHIA_TOKENIZER_SIZE} (Pythia uses 50304)")
    total = data["val_fraction"] + data["test_fraction"]
    if total >= 1:
        out.append(f"data.val_fraction + data.test_fraction: {data['val_fraction']} + {data['test_fraction']} = "
                   f"{total:g}; allowed: a sum < 1 (the rest is the train split)")
    if data["split"] == "shuffled_chunks" and data["test_fraction"] != 0:
        out.append(f"data.test_fraction: {data['test_fraction']} with data.split 'shuffled_chunks' (v1 has no test "
                   "split; chunks of one stream would leak into it); allowed: 0, or data.split 'documents'")
    if (data["split"] == "shuffled_chunks" or data["test_fraction"] == 0) and mem_["examples_test"] > 0:
        out.append(f"memories.examples_test: {mem_['examples_test']} but there are no test documents "
                   f"(data.split {data['split']!r}, data.test_fraction {data['test_fraction']}); allowed: 0")
    if data["source"] == "text_dir":
        folder = data["text_dir"]
        if not folder:
            out.append("data.text_dir: '' is empty; data.source 'text_dir' needs a folder with one sub-folder "
                       "or file per domain")
        elif not _is_dir(folder):
            out.append(f"data.text_dir: {folder!r} is not a folder (relative paths start at the repository root)")
    if data["source"] == "pile" and data["max_documents"] == 0:
        out.append("data.max_documents: 0 with data.source 'pile' would stream the whole Pile; allowed: >= 1")
    return out


def _is_dir(path: str) -> bool:
    try:
        return Path(path).expanduser().is_dir()
    except (OSError, ValueError, RuntimeError):  # ValueError: NUL byte; RuntimeError: unknown ~user
        return False


def _hf_problems(ref: str, model: dict) -> list[str]:
    """pretrain.init hf:<ref>: a local folder must hold a GPT-NeoX config.json matching the model section.

    Hub ids are only checked for their form here; the weights are checked when pretrain loads them."""
    key = "pretrain.init"
    local = ref.startswith(("/", "./", "../", "~")) or _is_dir(ref)
    if not local:
        return [] if _HUB_ID.match(ref) else [
            f"{key}: 'hf:{ref}' is neither a local folder nor a hub id; allowed: hf:<owner/name> or hf:<folder>"]
    if not _is_dir(ref):
        return [f"{key}: 'hf:{ref}': folder {ref!r} does not exist"]
    cfg_path = Path(ref).expanduser() / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [f"{key}: 'hf:{ref}': cannot read {cfg_path} ({type(e).__name__}); a transformers GPT-NeoX "
                "checkpoint folder has config.json beside its weights"]
    if not isinstance(cfg, dict) or cfg.get("model_type") != "gpt_neox":
        got = cfg.get("model_type") if isinstance(cfg, dict) else None
        return [f"{key}: 'hf:{ref}': {cfg_path} has model_type {got!r}; allowed: 'gpt_neox' (Pythia)"]
    fields = {"vocab_size": "vocab_size", "hidden_size": "hidden", "num_hidden_layers": "layers",
              "num_attention_heads": "heads", "intermediate_size": "ffn"}
    return [f"model.{ours}: {model[ours]} differs from {theirs} = {cfg[theirs]!r} in {cfg_path}; "
            f"allowed: {cfg[theirs]!r} (the imported weights fix the shape)"
            for theirs, ours in fields.items() if theirs in cfg and cfg[theirs] != model[ours]]


def cli_main(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a pipeline entry point: a UserError prints `error: <message>` and exits with its
    exit_code (2 for bad parameters or inputs),
    Ctrl-C prints one line and exits 130; neither shows a traceback.

        @cli_main
        def main(argv: list[str] | None = None) -> None: ...
        if __name__ == "__main__":
            main()
    """
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(e.exit_code) from None
        except KeyboardInterrupt:
            print(f"interrupted: {Path(sys.argv[0]).name} stopped (Ctrl-C)", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except (MemoryError, OSError, RuntimeError) as e:
            message = _resource_message(e)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    return run


def _resource_message(e: BaseException) -> str | None:
    """One line for running out of memory or disk space (outputs are atomic, so none is left half-written);
    None for any other error, which keeps its traceback."""
    text = " ".join(str(e).split())[:300]
    if isinstance(e, MemoryError) or "can't allocate memory" in text or type(e).__name__ == "OutOfMemoryError":
        return (f"out of memory ({text}); lower the sizes in params.yaml: model.vocab_size, model.hidden, "
                "model.layers, model.ffn, memories.examples_*, train.batch_size")
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device writing {e.filename or 'a stage output'}; free disk space and rerun"
    return None


def require_listed(params: dict, flag: str, value: Any, key: str, source: str) -> None:
    """ParamsError unless the command-line `flag`'s `value` is in the list params `key` (e.g. "train.seeds"):
    a run the parameters do not describe would bypass their checks."""
    section, name = key.split(".")
    listed = params[section][name]
    if value not in listed:
        raise ParamsError(f"{flag} {value!r} is not in {key} {listed}; allowed: {', '.join(map(str, listed))} "
                          f"(or add it to {key})", source)


def rerun_key(params: dict, *paths: str) -> str:
    """The values of dotted `paths` (e.g. "train.lr") as one canonical JSON string; a Snakemake
    rule lists it under `params:` so the rule reruns exactly when one of them changes."""
    out = {}
    for path in paths:
        value: Any = params
        for part in path.split("."):
            value = value[part]
        out[path] = value
    return json.dumps(out, sort_keys=True)
