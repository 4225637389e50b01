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
@click.option("--out", "out_dir", default="onnxsal-demo", show_default=True, help="Folder for the figures.")
@click.option("--providers", default="auto", show_default=True, help="auto, cpu or cuda.")
def demo(out_dir: str, providers: str):
    """Explain the bundled MNIST model on bundled digits and write the keras-vis style figures."""
    from .demo import run_demo

    run_demo(out_dir, providers=providers)


@cli.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--method", default="gradient", show_default=True)
@click.option("--target", "target", type=click.Choice(["argmax", "target", "tensor"]), default="argmax", show_default=True,
              help="argmax: top class inside the graph; target: an int64 'target' input; tensor: a seed input.")
@click.option("--softmax", type=click.Choice(["identity", "keep"]), default="identity", show_default=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the graph.")
def compile_cmd(model: str, method: str, target: str, softmax: str, out: str):
    """Write the standalone attribution graph of MODEL (any ONNX Runtime can run it)."""
    from .explainer import compile as compile_graph
    from .io_utils import save_model_atomic

    graph = compile_graph(model, method=method, target=target, softmax=softmax)
    save_model_atomic(graph, out)
    click.echo(f"wrote {out}: inputs {[i.name for i in graph.graph.input]}, outputs {[o.name for o in graph.graph.output]}")


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
