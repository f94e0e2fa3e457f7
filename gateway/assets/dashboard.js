// The gateway's live dashboard: polls /dashboard/data every second and draws it with uPlot.
// Each panel reports what it drew in data-* attributes (data-points: samples with a value,
// data-max, data-last), so a headless browser's DOM dump shows whether the charts have data.
'use strict';

(() => {
  const DATA_URL = '/dashboard/data';
  const POLL_MS = 1000;
  const CHART_HEIGHT = 260;
  const QPS_CLASSES = [
    ['2xx', '#2e7d32'], ['409', '#ef6c00'], ['429', '#6a1b9a'], ['5xx', '#c62828'], ['other', '#9e9e9e'],
  ];
  const PALETTE = ['#1565c0', '#ef6c00', '#2e7d32', '#6a1b9a', '#c62828', '#00838f', '#ad1457',
    '#5d4037', '#827717', '#37474f'];

  const charts = {};
  const $ = (id) => document.getElementById(id);
  const fmt = (digits) => (u, v) => (v == null ? '–' : v.toFixed(digits));

  // Samples where at least one series has a value, and the largest / latest values.
  function describe(columns) {
    let points = 0;
    let max = null;
    let last = null;
    const n = columns.length ? columns[0].length : 0;
    for (let i = 0; i < n; i++) {
      let any = false;
      let sum = null;
      for (const col of columns) {
        const v = col[i];
        if (v == null) continue;
        any = true;
        sum = (sum ?? 0) + v;
        if (max == null || v > max) max = v;
      }
      if (any) {
        points++;
        last = sum;
      }
    }
    return { points, max, last };
  }

  function mark(panel, columns) {
    const d = describe(columns);
    panel.dataset.points = String(d.points);
    panel.dataset.max = d.max == null ? '' : String(+d.max.toFixed(3));
    panel.dataset.last = d.last == null ? '' : String(+d.last.toFixed(3));
    return d;
  }

  // Creates the panel's chart, or feeds it new data when its series are unchanged.
  function draw(panelId, series, data, yLabel) {
    const panel = $(panelId);
    const box = panel.querySelector('.chart');
    const signature = series.map((s) => s.label).join('\u0000');
    let entry = charts[panelId];
    if (!entry || entry.signature !== signature) {
      if (entry) entry.plot.destroy();
      const opts = {
        width: box.clientWidth || 600,
        height: CHART_HEIGHT,
        series: [{}, ...series],
        axes: [{}, { label: yLabel, size: 60 }],
        scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        legend: { live: false },
      };
      entry = charts[panelId] = { signature, plot: new uPlot(opts, data, box) };
    } else {
      entry.plot.setData(data);
    }
    panel.dataset.rendered = 'true';
    panel.dataset.series = String(series.length);
  }

  function drawQps(d) {
    const columns = QPS_CLASSES.map(([name]) => d.qps[name] || []);
    const series = QPS_CLASSES.map(([name, stroke]) => ({
      label: name, stroke, width: 2, value: fmt(1),
    }));
    draw('panel-qps', series, [d.time, ...columns], 'req/s');
    const info = mark($('panel-qps'), columns);
    $('panel-qps').querySelector('.now').textContent =
      info.last == null ? '' : `${info.last.toFixed(0)} req/s`;
  }

  function drawLockWait(d) {
    const strategies = d.lock_wait.filter((s) => s.segment == null);
    const series = [];
    const columns = [];
    strategies.forEach((s, i) => {
      const stroke = PALETTE[i % PALETTE.length];
      series.push({ label: `${s.strategy} p50`, stroke, width: 2, value: fmt(2) });
      series.push({ label: `${s.strategy} p99`, stroke, width: 1, dash: [6, 4], value: fmt(2) });
      columns.push(s.p50_ms, s.p99_ms);
    });
    draw('panel-lock', series, [d.time, ...columns], 'ms');
    mark($('panel-lock'), columns);
    drawSegments(d.lock_wait.filter((s) => s.segment != null));
  }

  // Per-segment quantiles, latest interval with waits.
  function drawSegments(segments) {
    const table = $('panel-lock').querySelector('table.segments');
    table.replaceChildren();
    if (!segments.length) return;
    const row = (cells, tag) => {
      const tr = document.createElement('tr');
      for (const c of cells) {
        const cell = document.createElement(tag);
        cell.textContent = c;
        tr.append(cell);
      }
      table.append(tr);
    };
    row(['strategy / segment', 'p50 ms', 'p99 ms', 'waits'], 'th');
    for (const s of segments) {
      let i = s.p99_ms.length - 1;
      while (i >= 0 && s.p99_ms[i] == null) i--;
      const at = (col) => (i >= 0 && col[i] != null ? col[i].toFixed(2) : '–');
      row([`${s.strategy} / ${s.segment}`, at(s.p50_ms), at(s.p99_ms), i >= 0 ? String(s.count[i]) : '0'], 'td');
    }
  }

  function drawStock(d) {
    const series = d.stock.map((s, i) => ({
      label: s.segment == null ? s.sku : `${s.sku}/${s.segment}`,
      stroke: PALETTE[i % PALETTE.length],
      width: 2,
      value: fmt(0),
    }));
    const columns = d.stock.map((s) => s.available);
    draw('panel-stock', series, [d.time, ...columns], 'units');
    const info = mark($('panel-stock'), columns);
    $('panel-stock').querySelector('.now').textContent =
      info.last == null ? '' : `${info.last.toFixed(0)} left${d.stock_series_dropped ? ' (some series not shown)' : ''}`;
  }

  function drawOversold(d) {
    const panel = $('panel-oversold');
    const big = $('oversold');
    const total = d.oversold.total;
    big.textContent = total == null ? 'n/a' : String(total);
    big.dataset.value = total == null ? 'n/a' : String(total);
    big.className = `big ${total == null ? '' : total > 0 ? 'bad' : 'ok'}`;
    mark(panel, [d.oversold.series]);
    const bad = Object.entries(d.oversold.by_sku).filter(([, v]) => v > 0);
    $('oversold-note').textContent = total == null
      ? 'no upstream could be scraped'
      : bad.length
        ? bad.map(([sku, v]) => `${sku}: ${v}`).join(', ')
        : d.oversold.exported ? 'no SKU oversold' : 'no stock_oversold_units series yet (counted as 0)';
    const list = $('upstreams');
    list.replaceChildren(...d.upstreams.map((u) => {
      const li = document.createElement('li');
      li.className = u.ok ? 'ok' : 'down';
      const where = `${u.pools.join(', ')} ${u.url}`;
      li.textContent = u.ok ? where : `${where}: ${u.error}`;
      return li;
    }));
  }

  function setStatus(state, text) {
    const status = $('status');
    status.dataset.state = state;
    status.textContent = text;
  }

  let polls = 0;
  async function poll() {
    try {
      const response = await fetch(DATA_URL, { cache: 'no-store' });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const d = await response.json();
      drawQps(d);
      drawLockWait(d);
      drawStock(d);
      drawOversold(d);
      polls++;
      document.body.dataset.polls = String(polls);
      const every = d.interval_ms ? `every ${d.interval_ms / 1000} s` : 'waiting for the first sample';
      setStatus('ok', `live · ${d.time.length} samples ${every} · ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      setStatus('error', `cannot load ${DATA_URL}: ${error.message}`);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  window.addEventListener('resize', () => {
    for (const [id, entry] of Object.entries(charts)) {
      const box = $(id).querySelector('.chart');
      entry.plot.setSize({ width: box.clientWidth, height: CHART_HEIGHT });
    }
  });

  poll();
})();
