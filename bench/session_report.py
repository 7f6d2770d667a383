"""The sessions benchmark's report: the summary table (ours vs echo per level), the details
table, and what the server logs said."""
from __future__ import annotations

import platform
import re
import statistics
import time
from pathlib import Path

import psutil

from bench.harness import git_commit, markdown_table


def scan_log(path: Path) -> dict:
    """Counts of WARNING/ERROR/Traceback lines in a server log, and the first few distinct ones."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    bad = [l for l in lines if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Exception", l)]
    distinct: list[str] = []
    for line in bad:
        key = re.sub(r"^\S+ \S+ ", "", line)  # drop the timestamp
        key = re.sub(r"[0-9a-f]{32}", "<id>", key)[:160]
        if key not in distinct:
            distinct.append(key)
    return {"lines": len(lines), "problem_lines": len(bad), "distinct": distinct[:8]}


def fmt(x, spec=".1f", none="n/a") -> str:
    return none if x is None else format(x, spec)


def saturated(r: dict | None, target_fps: float = 25.0) -> bool:
    """The run could not keep real time: returned video well below target, or the clients' own
    audio senders behind the wall clock (the machine, not just the server, ran out of CPU)."""
    if not r or "fps_mean" not in r:
        return False
    return r["fps_mean"] < 0.9 * target_fps or (r.get("client_audio_behind_s_max") or 0) > 0.5


def table(rows: list[tuple[dict, dict | None]]) -> str:
    header = ["sessions", "connected (ours/echo)", "our CPU/session %", "echo CPU/session %", "ratio",
              "out fps (mean/min)", "echo fps (mean/min)", "loop lag p50/p99 ms", "echo lag p50/p99 ms",
              "onset→gender s (mean/max)", "RSS MB (ours/echo)"]

    def cell_fps(r):
        return "n/a" if not r or "fps_mean" not in r else f"{r['fps_mean']:.1f} / {r['fps_min']:.1f}"

    def cell_lag(r):
        return "n/a" if not r or r.get("lag_p50_ms") is None else f"{r['lag_p50_ms']:.1f} / {r['lag_p99_ms']:.1f}"

    lines = []
    for ours, echo in rows:
        ours_cpu = ours.get("cpu_pct_per_session")
        echo_cpu = echo.get("cpu_pct_per_session") if echo else None
        ratio = f"{ours_cpu / echo_cpu:.2f}" if ours_cpu and echo_cpu else "n/a"
        onsets = ours.get("onset_to_gender_s") or []
        onset = "n/a" if not onsets else f"{statistics.fmean(onsets):.2f} / {max(onsets):.2f}"
        if ours.get("gender_missing"):
            onset += f" ({ours['gender_missing']} none)"
        conn = f"{ours.get('connected', 0)}/{echo.get('connected', 0) if echo else '-'}"
        rss = f"{fmt(ours.get('rss_mb'), '.0f')} / {fmt(echo.get('rss_mb') if echo else None, '.0f')}"
        mark = "*" if saturated(ours) or saturated(echo) else ""
        lines.append([f"{ours['sessions']}{mark}", conn, fmt(ours_cpu), fmt(echo_cpu), ratio, cell_fps(ours),
                      cell_fps(echo), cell_lag(ours), cell_lag(echo), onset, rss])
    return markdown_table(header, lines)


def details(rows: list[tuple[dict, dict | None]]) -> str:
    """One row per server run (with ``--only echo`` the rows' "ours" is a placeholder: left out)."""
    cols = [
        ("sessions", lambda r: str(r["sessions"])),
        ("server", lambda r: r["server"]),
        ("CPU total %", lambda r: fmt(r.get("cpu_pct"))),
        ("CPU ms / returned frame", lambda r: fmt(r.get("cpu_ms_per_returned_frame"), ".2f")),
        ("bench-process CPU %", lambda r: fmt(r.get("client_process_cpu_pct"))),
        ("other processes CPU %", lambda r: fmt(r.get("others_cpu_pct"))),
        ("load avg", lambda r: "/".join(f"{x:.1f}" for x in r.get("loadavg_start_end") or []) or "n/a"),
        ("client loop lag p50/p99 ms", lambda r: "n/a" if r.get("client_loop_lag_ms_p50") is None
         else f"{r['client_loop_lag_ms_p50']:.0f} / {r['client_loop_lag_ms_p99']:.0f}"),
        ("client audio behind s", lambda r: fmt(r.get("client_audio_behind_s_max"), ".2f")),
        ("video loss up/down %", lambda r: f"{fmt(r.get('loss_up_video_pct'), '.1f')} / "
                                            f"{fmt(r.get('loss_down_video_pct'), '.1f')}"),
        ("ping RTT p50/p99 ms", lambda r: "n/a" if r.get("ping_rtt_ms_p50") is None
         else f"{r['ping_rtt_ms_p50']:.0f} / {r['ping_rtt_ms_p99']:.0f}"),
        ("ping p50 up/down ms", lambda r: "n/a" if r.get("ping_up_ms_p50") is None
         else f"{r['ping_up_ms_p50']:.0f} / {r['ping_down_ms_p50']:.0f}"),
        ("srv video out/in fps/session", lambda r: "-" if "server_video_out_fps_per_session" not in r else
         f"{r['server_video_out_fps_per_session']:.1f} / {r['server_video_in_fps_per_session']:.1f}"),
        ("srv frames dropped/s", lambda r: fmt(r.get("server_frames_dropped_per_s"))),
        ("window lag p50/p99 ms est. (>25 / >100 ms)", lambda r: "-" if "window_lag_over_25ms_pct" not in r else
         f"{r['window_lag_p50_ms_est']:.1f} / {r['window_lag_p99_ms_est']:.0f} "
         f"({r['window_lag_over_25ms_pct']:.0f}% / {r['window_lag_over_100ms_pct']:.0f}%)"),
        ("load (cpu / video / rtt / udp / lag)", lambda r: "-" if "load_mean" not in r else
         f"{r['load_mean']:.2f} (" + " / ".join(f"{v:.2f}" for v in r["load_parts_mean"].values()) + ")"),
        ("gender events", lambda r: str(r.get("gender_events", 0))),
        ("classify latency max ms", lambda r: fmt(r.get("gender_latency_ms_max"), ".0f")),
        ("error events", lambda r: str(r.get("error_event_count", 0))),
        ("log problem lines", lambda r: str((r.get("log_problems") or {}).get("problem_lines", 0))),
        ("errors", lambda r: "; ".join(filter(None, [r.get("error")] + list(dict.fromkeys(
            r.get("connect_errors") or [])))) or "-"),
    ]
    return markdown_table([name for name, _ in cols],
                          [[cell(r) for _, cell in cols] for pair in rows for r in pair if r and "server" in r])


def log_notes(raw: list[dict]) -> list[str]:
    notes = []
    for r in raw:
        problems = r.get("log_problems") or {}
        if problems.get("problem_lines"):
            notes.append(f"- `{r['log']}`: {problems['problem_lines']} warning/error lines, e.g.")
            notes.extend(f"  - `{line}`" for line in problems.get("distinct", []))
    return (["Server logs:", "", *notes, ""] if notes else
            ["Server logs: no warnings or errors.", ""])


def report(rows: list[tuple[dict, dict | None]], raw: list[dict], args) -> str:
    """The whole markdown report of a run."""
    return "\n".join([
        f"Sessions benchmark, {time.strftime('%Y-%m-%d %H:%M')}, commit {git_commit()}, {platform.machine()} "
        f"{psutil.cpu_count()} cores, {args.duration:.0f}s window per level, clients in the bench process "
        f"(same machine), echo transform `{args.transform}`.",
        "",
        table(rows),
        "",
        "CPU is % of one core (server process, all threads), measured over the window and divided by the "
        "connected sessions; fps is what each client decoded. Loop lag p50/p99 is /health's at the end of "
        "the window (its last 600 samples = 60 s, so it includes server start-up; the window-only "
        "estimate from /metrics is in the details). onset→gender: client clock, from the first non-silent "
        "audio sample sent to the first `gender` event received. `*`: the run could not keep real time "
        "(returned video under 90% of 25 fps, or the clients' own audio senders over 0.5 s behind the wall "
        "clock): the machine ran out of CPU, so CPU/session there is the share each server got, not what "
        "it needs, and onset→gender includes the clients' lag. Compare 'CPU ms / returned frame' instead.",
        "",
        "Details:",
        "",
        details(rows),
        "",
        *log_notes(raw),
    ])
