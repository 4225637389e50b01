"""The `onnxsal` command: parses arguments and calls the library; user errors exit 2 with one line."""

from __future__ import annotations

import sys

import click

from .errors import OnnxsalError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxsal")
def cli():
    """Saliency maps and attributions for any ONNX model."""


@cli.command()
@click.option("-o", "--out", "out_dir", default="onnxsal-demo", show_default=True, help="Folder for the figures.")
@click.option("--providers", default="auto", show_default=True, help="auto, cpu or cuda.")
def demo(out_dir: str, providers: str):
    """Explain the bundled MNIST model on bundled digits and write the keras-vis style figures."""
    from .demo import run_demo

    run_demo(out_dir, providers=providers)


INPUT_SHAPE_HELP = ("Input dims such as 1,3,224,224 to build the graph for (NAME=1,3,224,224 for one of several "
                    "inputs; repeatable); a dim that is not a number (N, ?) stays dynamic.")


def _input_shapes(values: tuple[str, ...]):
    """--input-shape values as `input_shapes=`: one tuple, or a dict by input name."""
    if not values:
        return None
    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        tokens = [t.strip() for t in dims.replace("x", ",").split(",") if t.strip()]
        if not tokens:
            raise click.BadParameter(f"expected dims such as 1,3,224,224, not {value!r}", param_hint="--input-shape")
        shape = tuple(int(t) if t.isdigit() else None for t in tokens)
        if not sep and len(values) > 1:
            raise click.BadParameter("name each input when giving several: NAME=1,3,224,224", param_hint="--input-shape")
        shapes[name if sep else None] = shape
    return shapes[None] if None in shapes else shapes


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--output", "output", default=None, help="The output to explain (default: the first).")
@click.option("--input-shape", "input_shape", multiple=True, help=INPUT_SHAPE_HELP)
@click.option("--composite", default=None, help="Also list the LRP rule each node gets under this composite (e.g. EpsilonPlusFlat).")
def inspect(model: str, as_json: bool, output: str | None, input_shape: tuple[str, ...], composite: str | None):
    """Show MODEL's inputs, ops, gradient coverage, rectifiers, softmax head and Grad-CAM layers."""
    import json

    from .inspection import format_report, inspect_model

    report = inspect_model(model, output=output, input_shapes=_input_shapes(input_shape), composite=composite)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))


def _size(value: str | None):
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW such as 224x224, not {value!r}") from None
    return h, w


def _options(pairs: tuple[str, ...]) -> dict:
    """KEY=VALUE method options; values read as Python literals (numbers, True, None) or kept as text."""
    import ast

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, not {pair!r}", param_hint="--option")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1)
@click.option("-m", "--method", default=None,
              help="Attribution method (see `onnxsal methods`; default guided_backprop, integrated_gradients with --text).")
@click.option("-t", "--target", type=int, default=None, help="Class to explain (default: each image's top class).")
@click.option("-p", "--preprocess", "preset", default="auto", show_default=True,
              type=click.Choice(["auto", "imagenet", "keras", "caffe", "unit", "raw"]),
              help="auto: what the model's metadata says, else [0, 1].")
@click.option("--size", default=None, help="HxW to resize to, when the model's input size is not fixed.")
@click.option("--softmax", type=click.Choice(["identity", "keep"]), default="identity", show_default=True)
@click.option("-b", "--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--cmap", default="jet", show_default=True, type=click.Choice(["jet", "viridis", "hot", "gray"]))
@click.option("--modifier", type=click.Choice(["absolute", "negate", "positive", "negative"]), default=None,
              help="keras-vis gradient modifier applied to the attribution (negate: what argues against the class).")
@click.option("--resume", is_flag=True, help="Skip images whose outputs already exist.")
@click.option("--option", "option", multiple=True, help="Method option KEY=VALUE (e.g. n_samples=25, layer=NAME).")
@click.option("--providers", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Where built graphs are kept between runs (default: $ONNXSAL_CACHE_DIR or ~/.cache/onnxsal).")
@click.option("--no-cache", is_flag=True, help="Build the graph afresh and keep nothing.")
@click.option("--text", "texts", multiple=True, help="A sentence to explain with a token model (repeatable); needs --tokenizer.")
@click.option("--tokenizer", default=None, type=click.Path(dir_okay=False), help="Hugging Face tokenizer.json for --text.")
@click.option("--wrt", default="embeddings", show_default=True,
              help="With --text: embeddings, embeddings:sum, embeddings:output or an inner tensor's name.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: a Ray Data actor pool (onnxsal[ray]); IMAGES may also be globs or Parquet, and the rows "
                   "go to OUT/METHOD.parquet/ too.")
@click.option("--address", default=None, help="With --engine ray: the cluster to join (auto, ray://head:10001); default a new local one.")
@click.option("--actors", default=None, type=click.IntRange(min=1),
              help="With --engine ray: actors in the pool (default: one per GPU, else one per CPU).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
def explain(model, images, method, target, preset, size, softmax, batch_size, cmap, modifier, resume, option, providers,
            cache_dir, no_cache, texts, tokenizer, wrt, engine, address, actors, out_dir):
    """Explain IMAGES (files or folders) with MODEL: writes PNG overlays and .npy maps to --out.

    The attribution graph is kept in a cache, so the next run on the same model and options starts
    without building it (graph methods that are one run: gradient, guided_backprop, gradcam, lrp, ...)."""
    if texts or tokenizer:
        return _explain_text(model, images, texts, tokenizer, method, target, softmax, wrt, providers, option, out_dir)
    if not images:
        raise click.UsageError("Missing argument 'IMAGES...' (or --text with --tokenizer).")
    method = method or "guided_backprop"
    kwargs = dict(method=method, target=target, preset=preset, size=_size(size), softmax=softmax, batch_size=batch_size,
                  providers=providers, resume=resume, cmap=cmap, modifier=modifier,
                  cache=False if no_cache else (cache_dir or True), **_options(option))
    if engine == "ray":
        from .dataset import explain_dataset

        results = explain_dataset(model, images, out_dir, engine="ray", address=address, actors=actors, **kwargs)
    elif address is not None or actors is not None:
        raise click.UsageError("--address and --actors go with --engine ray.")
    else:
        from .batch import explain_images

        results = explain_images(model, images, out_dir, **kwargs)
    failed = [r for r in results if r.error]
    for r in results:
        if r.error:
            continue
        what = "skipped, outputs exist" if r.skipped else f"class {r.predicted}" + (f" ({r.label})" if r.label else "") + f" score {r.score:.4g}"
        click.echo(f"{r.image}: {what} -> {r.written[0]}")
    if failed:
        click.echo(f"{len(failed)} of {len(results)} images failed:", err=True)
        for r in failed:
            click.echo(f"  {r.image}: {r.error}", err=True)
        raise SystemExit(1)


def _explain_text(model, images, texts, tokenizer, method, target, softmax, wrt, providers, option, out_dir):
    """`explain --text`: per-token scores of a token model, written as tokens.html, .png and .json."""
    from .errors import InvalidInputError
    from .text import explain_text, write_text_result

    if images:
        raise click.UsageError("give either image files or --text, not both.")
    if not texts or not tokenizer:
        raise InvalidInputError("--text and --tokenizer go together: give the sentence(s) and the tokenizer.json file.")
    result = explain_text(model, list(texts), tokenizer, method=method or "integrated_gradients", target=target,
                          wrt=wrt, providers=providers, softmax=softmax, **_options(option))
    written = write_text_result(result, out_dir)
    for row in result.rows:
        top = max(zip(row.tokens, row.scores), key=lambda p: abs(p[1]))
        click.echo(f"{row.label}: strongest token {top[0]!r} ({top[1]:+.3g})")
    click.echo("wrote " + ", ".join(str(p) for p in written))


def _per_name_options(pairs: tuple[str, ...]) -> tuple[dict, dict]:
    """NAME.KEY=VALUE options as (method options, metric options) by NAME."""
    from .evaluate import METRICS

    by_method, by_metric = {}, {}
    for key, value in _options(pairs).items():
        name, sep, option = key.partition(".")
        if not sep or not option:
            raise click.BadParameter(f"expected METHOD.KEY=VALUE or METRIC.KEY=VALUE, not {key!r}", param_hint="--option")
        (by_metric if name in METRICS else by_method).setdefault(name, {})[option] = value
    return by_method, by_metric


@cli.command("evaluate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1)
@click.option("--methods", "methods_", default="gradient,guided_backprop,smoothgrad,integrated_gradients,gradcam",
              show_default=True, help="Comma-separated attribution methods to compare.")
@click.option("--metrics", default="deletion,insertion,morf,lerf,infidelity,sensitivity", show_default=True,
              help="Comma-separated metrics.")
@click.option("-t", "--target", type=int, default=None, help="Class to explain (default: each image's top class).")
@click.option("-p", "--preprocess", "preset", default="auto", show_default=True,
              type=click.Choice(["auto", "imagenet", "keras", "caffe", "unit", "raw"]),
              help="auto: what the model's metadata says, else [0, 1].")
@click.option("--size", default=None, help="HxW to resize to, when the model's input size is not fixed.")
@click.option("--score", type=click.Choice(["probability", "softmax", "raw"]), default="probability", show_default=True,
              help="What the curves follow: the class probability (softmax applied unless the model has one) or the raw output.")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(min=1), help="Points on each curve, minus one.")
@click.option("--sanity", is_flag=True, help="Also run the model-parameter randomisation check of each method.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-b", "--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--per-eval", default=64, show_default=True, type=click.IntRange(min=1),
              help="Perturbed copies per forward run.")
@click.option("--option", "option", multiple=True,
              help="METHOD.KEY=VALUE or METRIC.KEY=VALUE (e.g. smoothgrad.n_samples=25, morf.patch=4).")
@click.option("--providers", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
def evaluate_cmd(model, images, methods_, metrics, target, preset, size, score, steps, sanity, seed, batch_size,
                 per_eval, option, providers, out_dir):
    """Compare attribution methods on IMAGES (files or folders): writes a table, JSON and curve plots to --out."""
    from .evaluate import evaluate_images

    method_options, metric_options = _per_name_options(option)
    result = evaluate_images(model, list(images), methods_, metrics, target=target, preset=preset, size=_size(size),
                             providers=providers, score=score, steps=steps, sanity=sanity, seed=seed,
                             batch_size=batch_size, per_eval=per_eval, method_options=method_options,
                             metric_options=metric_options)
    written = result.save(out_dir)
    click.echo(result.table("text"), nl=False)
    for path, why in result.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    click.echo("wrote " + ", ".join(str(p) for p in written))


@cli.command()
def methods():
    """List the attribution methods and their options."""
    from . import methods as registry

    for name in registry.available():
        m = registry.get(name)
        compiled = " (compilable)" if m.build is not None else ""
        click.echo(f"{name}{compiled}: {m.summary}")
        opts = registry.options(m)
        if opts:
            click.echo(f"    options: {', '.join(opts)}")


@cli.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--method", default="gradient", show_default=True)
@click.option("--target", "target", type=click.Choice(["argmax", "target", "tensor"]), default="argmax", show_default=True,
              help="argmax: top class inside the graph; target: an int64 'target' input; tensor: a seed input.")
@click.option("--softmax", type=click.Choice(["identity", "keep"]), default="identity", show_default=True)
@click.option("--modifier", type=click.Choice(["absolute", "negate", "positive", "negative"]), default=None,
              help="keras-vis gradient modifier applied to the attribution.")
@click.option("--option", "option", multiple=True, help="Method option KEY=VALUE (e.g. n_samples=25, layer=NAME).")
@click.option("--input-shape", "input_shape", multiple=True, help=INPUT_SHAPE_HELP)
@click.option("-o", "--out", "--output", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the graph.")
def compile_cmd(model: str, method: str, target: str, softmax: str, modifier: str | None, option, input_shape, out: str):
    """Write the standalone attribution graph of MODEL (any ONNX Runtime can run it).

    A model whose gradient needs the input sizes it leaves dynamic takes --input-shape."""
    from .explainer import compile as compile_graph
    from .io_utils import save_model_atomic

    graph = compile_graph(model, method=method, target=target, softmax=softmax, modifier=modifier,
                          input_shapes=_input_shapes(input_shape), **_options(option))
    save_model_atomic(graph, out)
    click.echo(f"wrote {out}: inputs {[i.name for i in graph.graph.input]}, outputs {[o.name for o in graph.graph.output]}")


@cli.command("convert")
@click.argument("source", type=click.Path())
@click.option("-o", "--out", "--output", "out", required=True, type=click.Path(dir_okay=False), help="The ONNX file to write.")
@click.option("--input-shape", default=None,
              help="Input shape such as 1,3,224,224 where the source does not fix it (';' between several inputs).")
@click.option("--preprocess", type=click.Choice(["imagenet", "keras", "caffe", "unit", "raw"]), default=None,
              help="Record the input preprocessing (default: inferred for keras.applications/torchvision models).")
@click.option("--opset", type=click.IntRange(7, 26), default=17, show_default=True)
@click.option("--no-check", is_flag=True, help="Skip running both models on a sample input and comparing.")
@click.option("--allow-lambda", is_flag=True, help="Load Keras Lambda layers (runs code from the file: trusted files only).")
def convert_cmd(source: str, out: str, input_shape: str | None, preprocess: str | None, opset: int, no_check: bool,
                allow_lambda: bool):
    """Convert SOURCE (Keras .keras/.h5, TensorFlow SavedModel folder, TorchScript, torch.export .pt2) to ONNX.

    The framework model and the ONNX model run on the same seeded input and must agree, else nothing is
    written. Pickled PyTorch files (torch.save) are refused without being loaded.
    """
    from converters.convert import convert, summary

    proto = convert(source, out, input_shape=input_shape, preprocess=preprocess, opset=opset, check=not no_check,
                    allow_lambda=allow_lambda)
    click.echo(summary(proto, out))


def main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="onnxsal", standalone_mode=False)
    except OnnxsalError as exc:
        click.echo(f"onnxsal: error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("onnxsal: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
