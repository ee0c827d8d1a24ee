"""profile.md: a `--profile` run's section per relay phase (see bench.profile for what is read)."""

from __future__ import annotations

from typing import Any

from bench.profile import TOP_ENTRIES

JsonObject = dict[str, Any]
RELAY_ROLES = ("relay-api", "relay-worker", "valkey")


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _code(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def scripts_table(profile: JsonObject) -> list[str]:
    rows = profile["scripts"]
    if not rows:
        return ["No Lua script ran."]
    return [
        "| script | calls | per delivered | per s |",
        "|---|---:|---:|---:|",
        *(
            f"| {row['script']} | {row['calls']:,} | {_num(row['calls_per_delivered'], 3)} | "
            f"{_num(row['calls'] / profile['wall_s'], 1)} |"
            for row in rows
        ),
    ]


def commandstats_table(profile: JsonObject) -> list[str]:
    rows = profile["commandstats"][:TOP_ENTRIES]
    if not rows:
        return ["Valkey ran no command."]
    return [
        "| command | calls | per delivered | per s | µs | µs per call | µs per delivered |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {row['command']} | {row['calls']:,} | {_num(row['calls_per_delivered'], 3)} | "
            f"{_num(row['calls'] / profile['wall_s'], 1)} | {row['usec']:,} | "
            f"{row['usec_per_call']:.2f} | {_num(row['usec_per_delivered'], 2)} |"
            for row in rows
        ),
    ]


def slowlog_lines(profile: JsonObject) -> list[str]:
    rows = profile["slowlog"]
    if not rows:
        return [f"No command took over {profile['slowlog_slower_than_us']:,} µs."]
    return [
        "| µs | script | command (first 120 characters) |",
        "|---:|---|---|",
        *(
            f"| {row['duration_us']:,} | {row['script'] or ''} | {_code(row['command'])} |"
            for row in rows
        ),
    ]


def py_spy_lines(profile: JsonObject) -> list[str]:
    py_spy = profile["py_spy"]
    if py_spy["status"] == "absent":
        return [f"Not sampled: {py_spy['why']}."]
    if not py_spy["processes"]:
        return ["No relay process ran in this phase."]
    lines: list[str] = []
    for process in py_spy["processes"]:
        heading = f"#### {process['name']} (pid {process['pid']})"
        if "error" in process:
            lines += [heading, "", f"Not sampled: {process['error']}", ""]
            continue
        samples = process["samples"]
        lines += [
            heading,
            "",
            f"{samples:,} samples on CPU (~{samples / py_spy['rate_per_s']:.1f} CPU s at "
            f"{py_spy['rate_per_s']}/s).",
            "",
        ]
        if not samples:
            continue
        lines += [
            "| own % | cumulative % | function (file:first line) |",
            "|---:|---:|---|",
            *(
                f"| {100 * row['own_share']:.1f} | {100 * row['cumulative_share']:.1f} | "
                f"{_code(row['frame'])} |"
                for row in process["top_own"]
            ),
            "",
            "| cumulative % | function, by cumulative time |",
            "|---:|---|",
            *(
                f"| {100 * row['cumulative_share']:.1f} | {_code(row['frame'])} |"
                for row in process["top_cumulative"]
            ),
            "",
        ]
    return lines


def phase_section(phase: JsonObject) -> list[str]:
    profile = phase["profile"]
    per = phase["cpu_us_per_delivered"]
    cpu = ", ".join(f"{role} {_num(per.get(role))} µs" for role in RELAY_ROLES)
    summary = (
        f"{profile['delivered']:,} delivered in {profile['wall_s']:.1f} s; "
        f"CPU per delivered: {cpu}."
        if profile["delivered"]
        else f"Nothing delivered; {profile['wall_s']:.1f} s window."
    )
    if phase["error"]:
        summary += f" The phase failed: {phase['error'].splitlines()[0]}"
    return [
        f"## {phase['title']}",
        "",
        summary,
        "",
        "### Lua scripts the relay sent (its `apns_relay_redis_script_calls_total`)",
        "",
        *scripts_table(profile),
        "",
        "### Valkey `INFO commandstats`, delta over the phase (commands run by scripts included)",
        "",
        *commandstats_table(profile),
        "",
        f"### Valkey `SLOWLOG` (slower than {profile['slowlog_slower_than_us']:,} µs)",
        "",
        *slowlog_lines(profile),
        "",
        "### py-spy, per relay process: top functions by own time",
        "",
        *py_spy_lines(profile),
    ]


def profile_markdown(document: JsonObject) -> str:
    lines = [
        f"# Profile ({document['mode']} mode)",
        "",
        "Per relay phase, over the phase's measured window: the Lua scripts the relay sent, "
        "what Valkey spent per command, its slowest commands, and each relay process's "
        "hottest functions by py-spy's sampling (own: the function itself; cumulative: it and "
        "what it called; own time on `Runner.run` is the event loop's native code). The CPU "
        "figures are this profiled run's; compare them with a run without `--profile`. Notes: "
        + "; ".join(document["notes"])
        + ".",
        "",
    ]
    for phase in document["phases"]:
        if phase.get("profile") is not None:
            lines += phase_section(phase)
    return "\n".join(lines).rstrip() + "\n"
