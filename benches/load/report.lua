-- wrk reporter: after the run, one machine-readable line for benches/load.sh.
-- Latencies in microseconds; status_errors counts responses with a status >= 400.
done = function(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d status_errors=%d socket_errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
