"""`relay check`'s warnings about what a template or a `when:` reads: a misspelt run field
renders empty (or never matches) for every run without an error."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli_in_process


def _check(tmp_path: Path, template: str, rule_keys: str = "") -> tuple[Path, list[str]]:
    """`relay check` of a config whose one rule renders `template` to the console."""
    (tmp_path / "templates" / "console").mkdir(parents=True)
    (tmp_path / "templates" / "console" / "mine.txt.j2").write_text(template)
    config = tmp_path / "c.yaml"
    config.write_text(
        "templates: {dir: ./templates}\nchannels: {c: {type: console}}\n"
        f"rules:\n  - {{name: r, notify: [c], template: mine{rule_keys}}}\n"
    )
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    return config, result.stderr.splitlines()


def test_a_misspelt_run_field_in_a_template_is_warned_of_with_the_field_meant(
    tmp_path: Path,
) -> None:
    """`{{ run.taskIdentifer }}` gave "" for every run, and `relay check` said nothing: the
    warning names the file, the line, the field read and the one meant. Metadata and payload
    are free-form, a Realtime row keeps columns relay does not list (`run.queue`), the alert
    webhook's run has a `task`: none of those is warned of."""
    config, said = _check(
        tmp_path,
        "{{ run.status }} {{ run.metadata.anything }} {{ run.payload.whatever }}\n"
        "{{ run.taskIdentifer }} {{ run.queue }} {{ run.task.filePath }}\n"
        "{{ run['costInCent'] }} {{ run.get('tag') }} {{ run.tag }}\n",
    )
    head = f"warning: {config}:4: rules[0].template: console/mine.txt.j2"
    assert said == [
        f"{head}:2: `run.taskIdentifer` is no field of a run (it renders empty): did you mean"
        " `run.taskIdentifier`?",
        f"{head}:3: `run.costInCent` is no field of a run (it renders empty): did you mean"
        " `run.costInCents`?",
        f"{head}:3: `run.tag` is no field of a run (it renders empty): did you mean `run.tags`?",
    ]


def test_a_misspelt_run_field_in_when_is_warned_of(tmp_path: Path) -> None:
    """`when: run.costInCent > 100` is valid and never matches: warned of at the rule's
    `when`, beside the fields it reads right."""
    config, said = _check(
        tmp_path,
        "{{ run.status }}\n",
        ", when: 'run.costInCent > 100 and run.metadata.region and run.isFailed'",
    )
    assert said == [
        f"warning: {config}:4: rules[0].when: `run.costInCent` is no field of a run (it reads"
        " as nothing): did you mean `run.costInCents`?"
    ]


def test_a_template_failing_on_every_sample_event_is_warned_of(tmp_path: Path) -> None:
    """`{{ run.costInCents / 0 }}` passed `relay check` and sent the fallback for every run:
    tried on sample events of the kinds its rule sees, it is a warning naming the template and
    the error (its class and line, never a message)."""
    config, said = _check(tmp_path, "{{ run.status }}\n{{ run.costInCents / 0 }}\n")
    assert said == [
        f"warning: {config}:4: rules[0].template: console/mine.txt.j2 fails on every sample"
        " event relay tried for the rule (ZeroDivisionError in console/mine.txt.j2:2): the"
        " fallback would be sent each time"
    ]


def test_a_filter_given_wrong_arguments_is_warned_of_for_a_deployment_rule(
    tmp_path: Path,
) -> None:
    """The samples are of the rule's events: a deployment's too."""
    config, said = _check(
        tmp_path,
        "{{ run.deployment.version|truncate('ten') }}\n",
        ", match: {event: deployment.failed}",
    )
    assert said == [
        f"warning: {config}:4: rules[0].template: console/mine.txt.j2 fails on every sample"
        " event relay tried for the rule (TypeError in console/mine.txt.j2:1): the fallback"
        " would be sent each time"
    ]


def test_a_template_failing_on_some_runs_only_is_not_warned_of(tmp_path: Path) -> None:
    """One that renders for a completed run (or an alert webhook's run, where the config takes
    them) may fail for a failure on purpose, or for data the samples lack: no warning."""
    _, said = _check(tmp_path, "{% if run.status != 'COMPLETED' %}{{ 1 / 0 }}{% endif %}\n")
    assert said == []


def test_a_template_is_tried_as_what_it_renders_a_digest_only_as_a_digest(
    tmp_path: Path,
) -> None:
    """A template shared by runs and digests branches on `group`: tried on a run, it has none
    (as it renders for one); the digest's template is given the group it reads."""
    _, said = _check(tmp_path, "{% if group %}{{ 1 / 0 }}{% else %}{{ run.status }}{% endif %}\n")
    assert said == []
    digest = tmp_path / "templates" / "console" / "mine_digest.txt.j2"
    digest.write_text("{{ group.count + 1 }} runs\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        config.read_text().replace("template: mine", "template: mine, group_by: [status]")
    )
    checked = run_cli_in_process("check", "--config", str(config))
    assert (checked.returncode, checked.stderr) == (0, ""), checked.stderr


def test_a_template_past_a_limit_of_a_render_is_warned_of(tmp_path: Path) -> None:
    """A template past relay's limits (output, time) on one small sample is on the others:
    warned of after the first (each try costs up to the render's budget, at every start)."""
    config, said = _check(tmp_path, "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}\n")
    assert said == [
        f"warning: {config}:4: rules[0].template: console/mine.txt.j2 fails on every sample"
        " event relay tried for the rule (OutputTooLarge in console/mine.txt.j2: more than"
        " 4000000 characters): the fallback would be sent each time"
    ]


def test_a_misspelt_field_of_a_digests_run_is_warned_of_by_its_loop_name(tmp_path: Path) -> None:
    """A digest template reads its runs through a loop: `{% for r in group.runs[:10] %}{{
    r.taskIdentifer }}` rendered empty for each, unwarned (only `run.` was followed). A loop
    over something else is not taken for runs."""
    (tmp_path / "templates" / "console").mkdir(parents=True)
    (tmp_path / "templates" / "console" / "mine_digest.txt.j2").write_text(
        "{% for r in group.runs[:10] %}{{ r.taskIdentifer }} {{ r.status }}{% endfor %}\n"
        "{% for r in group.labels.items() %}{{ r.statu }}{% endfor %}\n"
    )
    (tmp_path / "templates" / "console" / "mine.txt.j2").write_text("{{ run.status }}\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        "templates: {dir: ./templates}\nchannels: {c: {type: console}}\n"
        "rules:\n  - {name: r, notify: [c], template: mine, group_by: [taskIdentifier]}\n"
    )
    result = run_cli_in_process("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"warning: {config}:4: rules[0].template: console/mine_digest.txt.j2:1:"
        " `r.taskIdentifer` is no field of a run (it renders empty): did you mean"
        " `r.taskIdentifier`?"
    ]


def test_a_misspelt_field_of_a_run_passed_to_a_macro_is_warned_of_by_its_parameter(
    tmp_path: Path,
) -> None:
    """A template that lays out a run in a macro (`{% macro item(r) %}`) and calls it with
    `run`, or with a digest's run, read `r.taskIdentifer` unwarned. A parameter given something
    else (`group`, a number) is not taken for a run."""
    config, warnings = _check(
        tmp_path,
        "{% macro item(r, n) %}{{ r.taskIdentifer }}{{ n.statu }}{% endmacro %}\n"
        "{% macro other(g) %}{{ g.statu }}{% endmacro %}\n"
        "{% macro keyed(a, b) %}\n{{ b.costInCent }}{% endmacro %}\n"
        "{{ item(run, 1) }}{{ other(group) }}{{ keyed(1, b=run) }}\n",
    )
    said = " is no field of a run (it renders empty): did you mean"
    head = f"warning: {config}:4: rules[0].template: console/mine.txt.j2"
    assert warnings == [
        f"{head}:1: `r.taskIdentifer`{said} `r.taskIdentifier`?",
        f"{head}:4: `b.costInCent`{said} `b.costInCents`?",
    ]
