// govloop cost and usage dashboard (served by `govloop serve` at /dashboard; see server/dashboard.ts).
// Plain browser script, no build step: reads /v1/dashboard with the tenant's API key and draws the
// figures with Chart.js (served from node_modules by the same server). Every data element carries a
// data-testid, and a data-value with the exact figure where the text is rounded.
(function () {
  'use strict';

  const KEY_ITEM = 'govloop.apiKey';
  const $ = (sel) => document.querySelector(sel);

  // ---- the API key: asked for on the page, or given once as ?key=, kept in this tab only ----
  function takeKeyFromUrl() {
    const url = new URL(window.location.href);
    const key = url.searchParams.get('key');
    if (key) {
      sessionStorage.setItem(KEY_ITEM, key);
      url.searchParams.delete('key');
      // Out of the address bar and the history: the key must not linger where it can be copied.
      window.history.replaceState(null, '', url.pathname + url.search + url.hash);
    }
  }
  const apiKey = () => sessionStorage.getItem(KEY_ITEM);

  // ---- formatting ----
  const usd2 = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const usd4 = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 4, maximumFractionDigits: 4 });
  const int = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const dec2 = new Intl.NumberFormat('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  /** Dollars: cents from $1 up, four decimals below (token costs are small). */
  const fmtUsd = (x) => (x === 0 || Math.abs(x) >= 1 ? usd2.format(x) : usd4.format(x));
  const fmtPct = (share) => (share === null ? '∞' : `${(share * 100).toFixed(1)} %`);
  const fmtMetric = { costUsd: fmtUsd, tokens: (x) => int.format(x), gpuHours: (x) => dec2.format(x) };
  const metricNames = { costUsd: 'cost', tokens: 'tokens', gpuHours: 'GPU-hours' };

  // ---- DOM helper: text only, never HTML from data ----
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) el.append(c);
    return el;
  }

  const palette = ['#2f6fde', '#e07b16', '#2e9e6a', '#8e2c8e', '#d64541', '#15a3b8', '#9a7b12', '#5f6caf', '#c2417f', '#6f8f2f', '#7a5c3e', '#3f3f3f'];
  const kindColors = {
    'admission-rejected': '#a52a26',
    'budget-rejected': '#d64541',
    'step-denied': '#f07470',
    'cap-stop': '#8e2c8e',
    cancelled: '#7d7d7d',
    queued: '#d9a400',
    'step-degraded': '#e07b16',
    'held-for-approval': '#f2c14e',
    'approval-escalated': '#c98a00',
    approved: '#2e9e6a',
    'approval-rejected': '#b03a2e',
    'approval-expired': '#9b6b6b',
    'approval-refused': '#c46a5f',
    compensated: '#15a3b8',
    'compensation-failed': '#5a1f1f',
    'operator-resolved': '#5f6caf',
  };

  // ---- state ----
  const ui = { dim: 'team', metric: 'costUsd', data: null, filter: null, charts: {} };

  async function api(path) {
    const res = await fetch(path, { headers: { authorization: `Bearer ${apiKey()}` }, cache: 'no-store' });
    const body = await res.json().catch(() => ({}));
    if (res.status === 401) {
      sessionStorage.removeItem(KEY_ITEM);
      const err = new Error(body.error || 'the API key was refused');
      err.auth = true;
      throw err;
    }
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    return body;
  }

  function showError(message) {
    const el = $('#error');
    el.textContent = message;
    el.hidden = !message;
  }

  function showLogin(message) {
    $('#content').hidden = true;
    $('#login').hidden = false;
    $('[data-testid=tenant]').textContent = '';
    showError(message || '');
    document.body.dataset.state = 'login';
  }

  async function load() {
    if (!apiKey()) return showLogin();
    document.body.dataset.state = 'loading';
    const weeks = $('#weeks').value;
    try {
      const data = await api(`/v1/dashboard?weeks=${encodeURIComponent(weeks)}`);
      ui.data = data;
      $('#login').hidden = true;
      showError('');
      $('#content').hidden = false;
      render(data);
      await loadTasks();
      document.body.dataset.state = 'ready';
    } catch (err) {
      if (err.auth) return showLogin(`${err.message}: enter a valid key`);
      showError(`Could not load the dashboard: ${err.message}`);
      document.body.dataset.state = 'error';
    }
  }

  // ---- rendering ----
  function render(d) {
    $('[data-testid=tenant]').textContent = `tenant ${d.tenant}`;
    $('[data-testid=period]').textContent =
      `${d.weeks.length} week${d.weeks.length === 1 ? '' : 's'} from ${d.from.slice(0, 10)} to ${d.to.slice(0, 10)} (UTC, ISO weeks) · generated ${d.generatedAt.replace('T', ' ').slice(0, 19)} UTC`;
    setFigure('total-cost', fmtUsd(d.totals.costUsd), d.totals.costUsd);
    setFigure('total-tokens', int.format(d.totals.tokens), d.totals.tokens);
    setFigure('total-gpu-hours', dec2.format(d.totals.gpuHours), d.totals.gpuHours);
    setFigure('total-events', int.format(d.totals.events), d.totals.events);
    drawWeekly();
    drawShare(d);
    renderBudgets(d.budgets);
    drawEnforcement(d);
    renderTop(d);
    $('#temporal-note').textContent = d.temporal
      ? `task ids open Temporal UI (namespace ${d.temporal.namespace})`
      : 'Temporal UI links are off: start govloop serve with --temporal-ui URL';
  }

  function setFigure(testid, text, value) {
    const el = $(`[data-testid="${testid}"]`);
    el.textContent = text;
    el.dataset.value = String(value);
  }

  function replaceChart(id, config) {
    if (ui.charts[id]) ui.charts[id].destroy();
    ui.charts[id] = new window.Chart(document.getElementById(id), config);
  }

  const baseOptions = { animation: false, responsive: true, maintainAspectRatio: false };

  function drawWeekly() {
    const d = ui.data;
    const rows = d.weekly[ui.dim];
    const keys = [...new Set(rows.map((r) => r.key))];
    // Biggest groups first, so colours stay with the big spenders.
    const totals = new Map(keys.map((k) => [k, rows.filter((r) => r.key === k).reduce((s, r) => s + r.costUsd, 0)]));
    keys.sort((a, b) => totals.get(b) - totals.get(a) || a.localeCompare(b));
    const datasets = keys.map((k, i) => ({
      label: k,
      backgroundColor: palette[i % palette.length],
      data: d.weeks.map((w) => rows.filter((r) => r.week === w && r.key === k).reduce((s, r) => s + r[ui.metric], 0)),
    }));
    $('#dim-name').textContent = ui.dim;
    $('#metric-name').textContent = metricNames[ui.metric];
    const fmt = fmtMetric[ui.metric];
    replaceChart('weekly-chart', {
      type: 'bar',
      data: { labels: d.weeks.map((w) => `week of ${w}`), datasets },
      options: {
        ...baseOptions,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { callback: (v) => fmt(Number(v)) } } },
        plugins: { legend: { position: 'bottom' }, tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${fmt(c.parsed.y)}` } } },
        onClick: (_e, els) => {
          if (!els.length) return;
          const key = datasets[els[0].datasetIndex].label;
          if (ui.dim === 'team') setFilter({ team: key });
          else if (ui.dim === 'model') setFilter({ model: key });
          else {
            const [team, ...project] = key.split('/');
            setFilter({ team, project: project.join('/') });
          }
        },
      },
    });
  }

  function drawShare(d) {
    const teams = d.top.teams;
    replaceChart('share-chart', {
      type: 'doughnut',
      data: {
        labels: teams.map((t) => t.key),
        datasets: [{ data: teams.map((t) => t.costUsd), backgroundColor: teams.map((_, i) => palette[i % palette.length]) }],
      },
      options: { ...baseOptions, plugins: { legend: { position: 'bottom' }, tooltip: { callbacks: { label: (c) => `${c.label}: ${fmtUsd(c.parsed)}` } } } },
    });
  }

  function renderBudgets(budgets) {
    const box = $('#budgets');
    box.replaceChildren();
    if (!budgets.length) box.append(h('div', { class: 'empty', text: 'No budgets for this tenant (govloop budget set).' }));
    for (const b of budgets) {
      const pct = (x) => `${Math.min(100, Math.max(0, (x * 100) / 1.2))}%`; // the bar spans 0–120 % of the limit
      const spent = h('div', { class: `spent fill-${b.step}` });
      spent.style.width = pct(b.share === null ? 1.2 : b.share);
      const reserved = h('div', { class: 'reserved' });
      reserved.style.left = spent.style.width;
      reserved.style.width = pct(b.committedShare === null || b.share === null ? 0 : b.committedShare - b.share);
      const bar = h('div', { class: 'bar', title: 'spent, then reserved; ticks at 50, 80, 100 and 110 % of the limit' }, reserved, spent);
      for (const t of [0.5, 0.8, 1, 1.1]) {
        const tick = h('div', { class: 'tick' });
        tick.style.left = pct(t);
        bar.append(tick);
      }
      box.append(
        h(
          'div',
          { class: 'budget', 'data-testid': 'budget', 'data-scope': b.scope, 'data-period': b.period },
          h(
            'div',
            { class: 'budget-head' },
            h('span', { class: 'budget-scope', text: b.window === b.period ? `${b.scope} · ${b.period}` : `${b.scope} · ${b.period} ${b.window}` }),
            h(
              'span',
              {},
              h('span', { 'data-testid': 'budget-share', 'data-value': b.share === null ? 'Infinity' : b.share, text: fmtPct(b.share) }),
              ' ',
              h('span', { class: `step step-${b.step}`, 'data-testid': 'budget-step', text: b.step }),
            ),
          ),
          bar,
          h(
            'div',
            { class: 'budget-figures' },
            'spent ',
            h('span', { 'data-testid': 'budget-spent', 'data-value': b.spentUsd, text: fmtUsd(b.spentUsd) }),
            ' · reserved ',
            h('span', { 'data-testid': 'budget-reserved', 'data-value': b.reservedUsd, text: fmtUsd(b.reservedUsd) }),
            ' · limit ',
            h('span', { 'data-testid': 'budget-limit', 'data-value': b.limitUsd, text: fmtUsd(b.limitUsd) }),
          ),
        ),
      );
    }
  }

  function drawEnforcement(d) {
    const days = [];
    const last = Math.min(Date.parse(d.to), Date.parse(d.generatedAt.slice(0, 10)) + 86400000);
    for (let t = Date.parse(d.from); t < last; t += 86400000) days.push(new Date(t).toISOString().slice(0, 10));
    const kinds = [...new Set(d.enforcement.map((e) => e.kind))];
    const count = (day, kind) => d.enforcement.filter((e) => e.day === day && e.kind === kind).reduce((s, e) => s + e.count, 0);
    replaceChart('enforcement-chart', {
      type: 'bar',
      data: {
        labels: days.map((x) => x.slice(5)),
        datasets: kinds.map((k) => ({ label: k, backgroundColor: kindColors[k] || '#999', data: days.map((day) => count(day, k)) })),
      },
      options: {
        ...baseOptions,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } },
        plugins: { legend: { position: 'bottom' } },
      },
    });
    const box = $('#enforcement-totals');
    box.replaceChildren();
    if (!kinds.length) box.append(h('span', { class: 'empty', text: 'No enforcement actions in this period.' }));
    for (const k of kinds) {
      const n = d.enforcement.filter((e) => e.kind === k).reduce((s, e) => s + e.count, 0);
      box.append(h('span', { class: 'chip', 'data-testid': 'enforcement-total', 'data-kind': k, 'data-value': n, text: `${k}: ${n}` }));
    }
  }

  function spenderRows(tbody, testid, rows, onClick, labelFor) {
    tbody.replaceChildren();
    if (!rows.length) tbody.append(h('tr', {}, h('td', { class: 'empty', colspan: 2, text: 'No spend in this period.' })));
    for (const r of rows) {
      tbody.append(
        h(
          'tr',
          { class: onClick ? 'clickable' : undefined, 'data-testid': testid, 'data-key': r.key, onclick: onClick ? () => onClick(r) : undefined },
          h('td', {}, labelFor ? labelFor(r) : r.key),
          h('td', { class: 'num', 'data-testid': 'cost', 'data-value': r.costUsd, text: fmtUsd(r.costUsd) }),
        ),
      );
    }
  }

  function taskLink(taskId, url) {
    return url
      ? h('a', { href: url, target: '_blank', rel: 'noopener noreferrer', class: 'mono', 'data-testid': 'task-link', text: taskId })
      : h('span', { class: 'mono', text: taskId });
  }

  function renderTop(d) {
    spenderRows($('[data-testid=top-teams] tbody'), 'top-team', d.top.teams, (r) => setFilter({ team: r.key }));
    spenderRows($('[data-testid=top-projects] tbody'), 'top-project', d.top.projects, (r) => {
      const [team, ...project] = r.key.split('/');
      setFilter({ team, project: project.join('/') });
    });
    spenderRows($('[data-testid=top-tasks] tbody'), 'top-task', d.top.tasks, null, (r) =>
      h('span', {}, taskLink(r.key, r.temporalUrl), h('div', { class: 'muted small', text: `${r.name || '(no task row)'} · ${r.team}/${r.project}` })),
    );
  }

  // ---- task drill-down ----
  function setFilter(filter) {
    ui.filter = filter;
    loadTasks().catch((err) => showError(`Could not load tasks: ${err.message}`));
  }

  async function loadTasks() {
    const f = ui.filter;
    const chips = $('#task-filter');
    chips.replaceChildren();
    let tasks = ui.data.tasks;
    if (f) {
      const params = new URLSearchParams(Object.entries(f).filter(([, v]) => v));
      tasks = (await api(`/v1/dashboard/tasks?${params}`)).tasks;
      chips.append(
        h(
          'span',
          { class: 'chip', 'data-testid': 'filter-chip' },
          Object.entries(f)
            .filter(([, v]) => v)
            .map(([k, v]) => `${k} = ${v}`)
            .join(', '),
          h('button', { type: 'button', title: 'show all recent tasks', onclick: () => setFilter(null), text: '✕' }),
        ),
      );
    } else {
      chips.append(h('span', { class: 'muted small', text: 'most recent; click a team, project or bar to drill down' }));
    }
    const tbody = $('[data-testid=tasks] tbody');
    tbody.replaceChildren();
    if (!tasks.length) tbody.append(h('tr', {}, h('td', { class: 'empty', colspan: 8, text: 'No tasks.' })));
    for (const t of tasks) {
      tbody.append(
        h(
          'tr',
          { 'data-testid': 'task', 'data-task-id': t.taskId },
          h('td', {}, taskLink(t.taskId, t.temporalUrl)),
          h('td', { text: t.name }),
          h('td', { text: t.kind }),
          h('td', {}, h('span', { class: `state state-${t.state}`, 'data-testid': 'task-state', text: t.state })),
          h('td', { text: `${t.team}/${t.project}` }),
          h('td', { text: t.model }),
          h('td', { class: 'num', 'data-testid': 'cost', 'data-value': t.costUsd, text: fmtUsd(t.costUsd) }),
          h('td', { class: 'small muted', text: t.createdAt.replace('T', ' ').slice(0, 16) }),
        ),
      );
    }
  }

  // ---- wiring ----
  function init() {
    takeKeyFromUrl();
    const weeks = new URL(window.location.href).searchParams.get('weeks');
    if (weeks && [...$('#weeks').options].some((o) => o.value === weeks)) $('#weeks').value = weeks;
    $('#weeks').addEventListener('change', () => {
      const url = new URL(window.location.href);
      url.searchParams.set('weeks', $('#weeks').value);
      window.history.replaceState(null, '', url.pathname + url.search);
      void load();
    });
    $('#refresh').addEventListener('click', () => void load());
    $('#forget').addEventListener('click', () => {
      sessionStorage.removeItem(KEY_ITEM);
      showLogin();
    });
    $('#key-form').addEventListener('submit', (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY_ITEM, $('#key-input').value.trim());
      $('#key-input').value = '';
      void load();
    });
    for (const b of document.querySelectorAll('#dim-tabs button')) {
      b.addEventListener('click', () => {
        ui.dim = b.dataset.dim;
        for (const x of document.querySelectorAll('#dim-tabs button')) x.classList.toggle('on', x === b);
        if (ui.data) drawWeekly();
      });
    }
    for (const b of document.querySelectorAll('#metric-tabs button')) {
      b.addEventListener('click', () => {
        ui.metric = b.dataset.metric;
        for (const x of document.querySelectorAll('#metric-tabs button')) x.classList.toggle('on', x === b);
        if (ui.data) drawWeekly();
      });
    }
    void load();
  }

  if (!window.Chart) {
    document.addEventListener('DOMContentLoaded', () => showError('Chart.js did not load (/dashboard/chart.umd.js).'));
  }
  init();
})();
