"""`anticloud import` and `anticloud models`: bring bundles in, and manage the model store."""

from __future__ import annotations

import time
from pathlib import Path

import click

from anticloud.cli import open_ledger, pass_home
from anticloud.cli.confirm import YES_HELP, confirm
from anticloud.config import load_config, load_policy
from anticloud.errors import ModelError
from anticloud.home import Home
from anticloud.models import ModelStore
from anticloud.templates import pin, review
from anticloud.trust import TrustStore


@click.command("import")
@click.argument("bundle", type=click.Path(path_type=Path))
@pass_home
def import_bundle(home: Home, bundle: Path) -> None:
    """Verify a signed bundle and copy its model into the store, or refuse it and say why.

    Recorded as model.import, or model.import.rejected with the reason.
    """
    policy = load_policy(home)
    start = time.monotonic()
    with open_ledger(home) as writer:
        imported = ModelStore(home).import_bundle(bundle, TrustStore.load(home), policy, writer)
    seconds = max(time.monotonic() - start, 1e-9)
    click.echo(f"imported {imported.manifest.name} ({imported.digest})")
    click.echo(f"  signed by  {', '.join(imported.signers)}")
    click.echo(f"  {imported.bytes} bytes in {seconds:.1f} s ({imported.bytes / seconds / 1e6:.0f} MB/s)")


@click.group("models")
def models_group() -> None:
    """The model store."""


@models_group.command("list")
@pass_home
def list_models(home: Home) -> None:
    """The imported models."""
    store, trust, policy = ModelStore(home), TrustStore.load(home), load_policy(home)
    models = store.list()
    if not models:
        click.echo("no models; bring one in with `anticloud import BUNDLE`")
    for model in models:
        size = sum(f.size for f in model.manifest.files)
        why_not = store.readiness(model.name, trust.lookup, policy)
        state = "ready" if why_not is None else f"CANNOT LOAD: {why_not}"
        click.echo(f"{model.name:<24} {size / 1e6:9.1f} MB  {model.digest[:21]}...  {state}")


@models_group.command("show")
@click.argument("name")
@pass_home
def show(home: Home, name: str) -> None:
    """A model's signed manifest."""
    store = ModelStore(home)
    model = store.get(name)
    m = model.manifest
    click.echo(f"{m.name}\n  manifest  {model.digest}\n  created   {m.created}\n  expires   {m.expires or 'never'}")
    facts = store.facts(name, load_policy(home).gguf)
    trained = f", trained on {facts.context_length} tokens of context" if facts.context_length else ""
    chat = "converses (chat template)" if facts.chat_template else "no chat template"
    click.echo(f"  model     {facts.architecture or 'unknown architecture'}, {facts.parameter_size} parameters, "
               f"{facts.quantization}{trained}; {chat}")
    for entry in m.files:
        click.echo(f"  file      {entry.path}  {entry.size} bytes  {entry.sha3_256}")
    for template in m.chat_templates:
        click.echo(f"  template  {template.file}:{template.key}  {template.sha3_256}")


@models_group.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help=YES_HELP)
@pass_home
def remove(home: Home, name: str, yes: bool) -> None:
    """Remove a model and the blobs no other model uses. Recorded as model.remove; a running
    server unloads it as soon as no request uses it."""
    store = ModelStore(home)
    store.get(name)  # an unknown model: one line, nothing asked
    if load_config(home).get("inference", "default_model") == name:
        click.echo(f"{name} is the default model (inference.default_model): requests that name no model will "
                   "fail until another is set")
    confirm(f"remove {name} from the store?", yes)
    with open_ledger(home) as writer:
        store.remove(name, writer)
    click.echo(f"removed {name}; a running server unloads it once idle")


@models_group.command("template")
@click.argument("source")
@pass_home
def template(home: Home, source: str) -> None:
    """Show the chat templates of SOURCE (a bundle directory, or a stored model) for review.

    Each is printed in full with its hash, whether the signed manifest declares it and whether
    the policy pins it. Pin what you reviewed with `anticloud models pin SOURCE`."""
    found = review(home, source)
    if not found:
        click.echo(f"{source} holds no chat template: nothing to review or pin")
    for t in found:
        state = ("pinned" if t.pinned else "NOT pinned") + ("" if t.declared else "; NOT declared by the manifest")
        click.echo(f"== {t.file}:{t.key}  {t.sha3_256}  ({state})")
        click.echo(t.text)


@models_group.command("pin")
@click.argument("source")
@click.option("--yes", is_flag=True, help="Pin without asking (you reviewed the templates already).")
@pass_home
def pin_templates(home: Home, source: str, yes: bool) -> None:
    """Pin the chat templates of SOURCE (a bundle directory, or a stored model) after review.

    Recorded as one config.change of chat_templates.pinned naming SOURCE and each template."""
    found = review(home, source)
    undeclared = [t for t in found if not t.declared]
    if undeclared:
        raise ModelError(f"{source}: {undeclared[0].file}:{undeclared[0].key} is not declared by the signed "
                         "manifest (its import would be refused); nothing pinned")
    todo = [t for t in found if not t.pinned]
    if not todo:
        click.echo(f"nothing to pin: {source} has {'no chat template' if not found else 'only pinned templates'}")
        return
    for t in todo:
        click.echo(f"{t.file}:{t.key}  {t.sha3_256}  ({len(t.text)} characters; "
                   f"`anticloud models template {source}` shows it)")
    if not yes:
        click.confirm(f"pin {len(todo)} template(s), letting this Jinja code run at load?", abort=True)
    with open_ledger(home) as writer:
        added = pin(home, writer, source, todo)
    click.echo(f"pinned {len(added)} template(s); recorded as config.change of chat_templates.pinned")
