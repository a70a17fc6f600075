// The notebooks dashboard: plain JavaScript over the notebooks API, nothing else.
//
// Credentials: the browser's own HTTP Basic prompt. The API answers 401 with
// `WWW-Authenticate: Basic realm="notebooks"`, the browser asks once and then sends the
// credentials it cached with every request to this origin: these fetch calls and the
// output frame alike, so no script ever holds a password.
//
// Every piece of data reaches the page through textContent or a property, never as HTML.
'use strict';

(() => {
  const API = new URL('../', document.baseURI); // the page is <base>/_notebooks/ui/
  const PAGE_SIZE = 50;
  const RUNS_SHOWN = 20;
  const POLL_MS = 1000;
  const FINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const BADGES = new Set(['queued', 'running', 'succeeded', 'failed', 'cancelled', 'scheduled', 'not-scheduled']);

  const $ = (id) => document.getElementById(id);
  const state = { notebookId: null, runId: null, pollTimer: null, nextToken: null };

  // --- HTTP -----------------------------------------------------------------------

  class ApiError extends Error {}

  async function request(method, path, body, options = {}) {
    const init = { method, credentials: 'same-origin', headers: {}, redirect: options.redirect || 'follow' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL(path, API), init);
    } catch (error) {
      throw new ApiError(`The API could not be reached (${error.message})`);
    }
    if (response.type === 'opaqueredirect') {
      return { response, data: null };
    }
    const text = await response.text();
    const isJson = (response.headers.get('Content-Type') || '').startsWith('application/json');
    let data = text;
    if (isJson && text) {
      try {
        data = JSON.parse(text);
      } catch (error) {
        throw new ApiError(`The API answered ${response.status} with malformed JSON`);
      }
    }
    // The seed answers some failures with status 200 and an error body.
    if (!response.ok || (data && typeof data === 'object' && data.error)) {
      const message = data && data.error && data.error.message ? data.error.message : `HTTP ${response.status}`;
      throw new ApiError(message);
    }
    return { response, data };
  }

  async function api(method, path, body) {
    return (await request(method, path, body)).data;
  }

  // --- DOM helpers ----------------------------------------------------------------

  function el(tag, properties = {}, children = []) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(properties)) {
      element[name] = value;
    }
    element.append(...children);
    return element;
  }

  function badge(element, text) {
    const key = String(text).toLowerCase().replace(/\s+/g, '-');
    element.className = BADGES.has(key) ? `badge badge-${key}` : 'badge';
    element.textContent = text;
    return element;
  }

  function pad(number) {
    return String(number).padStart(2, '0');
  }

  function formatTime(ms) {
    if (typeof ms !== 'number') {
      return '—';
    }
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function formatDuration(run) {
    if (typeof run.started_at !== 'number') {
      return '—';
    }
    const end = typeof run.finished_at === 'number' ? run.finished_at : Date.now();
    const seconds = Math.max(0, Math.round((end - run.started_at) / 1000));
    return seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  }

  function describeSchedule(schedule) {
    if (!schedule || !schedule.until) {
      return 'Not scheduled';
    }
    const day = schedule.period ? `${schedule.period}s` : 'Every day';
    const zone = schedule.timezone ? ` (${schedule.timezone})` : '';
    const time = schedule.time || schedule.until.slice(11, 16); // omitted: the time of day in `until`
    return `${day} at ${time}${zone} until ${schedule.until}`;
  }

  let messageTimer = null;

  function showMessage(text, kind = 'error') {
    clearTimeout(messageTimer);
    $('message-text').textContent = text;
    $('message').className = `message message-${kind}`;
    $('message').hidden = false;
    if (kind !== 'error') {
      messageTimer = setTimeout(() => { $('message').hidden = true; }, 5000);
    }
  }

  // Runs `work` with `button` disabled; any failure becomes the page's message.
  async function act(button, work) {
    if (button) {
      button.disabled = true;
    }
    $('message').hidden = true; // what an earlier action said no longer applies
    try {
      await work();
    } catch (error) {
      showMessage(error instanceof ApiError ? error.message : `Unexpected error: ${error.message}`);
    } finally {
      if (button) {
        button.disabled = false;
      }
    }
  }

  // --- Notebooks ------------------------------------------------------------------

  async function loadCounts() {
    const counts = await api('GET', 'notebooks/_count');
    const total = counts['Total Notebooks'];
    $('counts').textContent = `${total} notebook${total === 1 ? '' : 's'} · ${counts.Scheduled} scheduled`;
  }

  function notebookRow(notebook) {
    const name = el('button', { type: 'button', className: 'link', textContent: notebook.notebook_name });
    name.addEventListener('click', () => act(null, () => selectNotebook(notebook.notebook_id)));
    const row = el('tr', {}, [
      el('td', {}, [name]),
      el('td', {}, [badge(el('span'), notebook.status)]),
      el('td', { textContent: describeSchedule(notebook.schedule) }),
      el('td', { className: 'number', textContent: String(notebook.no_of_runs) }),
      el('td', { textContent: typeof notebook.last_run === 'number' ? formatTime(notebook.last_run) : 'never' }),
    ]);
    row.dataset.notebookId = notebook.notebook_id;
    row.classList.toggle('selected', notebook.notebook_id === state.notebookId);
    return row;
  }

  async function loadNotebooks(more = false) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (more && state.nextToken) {
      query.set('next_token', state.nextToken);
    }
    const { response, data } = await request('GET', `notebooks/_all?${query}`);
    const body = $('notebooks').tBodies[0];
    if (!more) {
      body.replaceChildren();
    }
    body.append(...data.map(notebookRow));
    state.nextToken = response.headers.get('X-Next-Token');
    $('more-notebooks').hidden = !state.nextToken;
    $('no-notebooks').hidden = body.rows.length > 0;
    $('notebooks').hidden = body.rows.length === 0;
  }

  async function refreshList() {
    await Promise.all([loadNotebooks(), loadCounts()]);
  }

  async function upload() {
    const file = $('upload-file').files[0];
    if (!file) {
      throw new ApiError('Choose an .ipynb file to upload');
    }
    let content;
    try {
      content = JSON.parse(await file.text());
    } catch (error) {
      throw new ApiError(`${file.name} is not a notebook: its content is not JSON`);
    }
    const name = $('upload-name').value.trim() || file.name;
    const created = await api('POST', 'notebooks', { notebook_name: name, content });
    $('upload-form').reset();
    showMessage(`Uploaded ${created.notebook_name}`, 'info');
    await refreshList();
    await selectNotebook(created.notebook_id);
  }

  // --- One notebook ---------------------------------------------------------------

  async function selectNotebook(notebookId) {
    const [notebook, declared] = await Promise.all([
      api('GET', `notebooks/${encodeURIComponent(notebookId)}`),
      api('GET', `notebooks/${encodeURIComponent(notebookId)}/parameters`),
    ]);
    const changed = state.notebookId !== notebookId;
    state.notebookId = notebookId;
    for (const row of $('notebooks').tBodies[0].rows) {
      row.classList.toggle('selected', row.dataset.notebookId === notebookId);
    }
    showNotebook(notebook);
    if (changed) {
      buildParameters(declared.parameters);
      fillScheduleForm(notebook.schedule);
      stopPolling(); // the run shown was another notebook's
      state.runId = null;
      $('run').hidden = true;
    }
    await loadRuns();
    $('detail').hidden = false;
    if (changed) {
      $('detail').scrollIntoView({ block: 'start' });
    }
  }

  function showNotebook(notebook) {
    $('detail-name').textContent = notebook.notebook_name;
    badge($('detail-status'), notebook.status);
    $('detail-meta').textContent =
      `Created ${formatTime(notebook.created_at)} by ${notebook.created_by} · updated ${formatTime(notebook.updated_at)}` +
      ` · ${notebook.no_of_runs} runs · id ${notebook.notebook_id}`;
    const schedule = notebook.schedule || {};
    let text = describeSchedule(schedule);
    if (typeof schedule.next_run === 'number') {
      text += ` · next run ${formatTime(schedule.next_run)} (your time)`;
    }
    $('schedule-current').textContent = text;
    $('unschedule-button').disabled = notebook.status !== 'Scheduled';
  }

  async function refreshNotebook() {
    if (state.notebookId) {
      showNotebook(await api('GET', `notebooks/${encodeURIComponent(state.notebookId)}`));
    }
  }

  // --- Parameters -----------------------------------------------------------------

  function kindOf(type) {
    const name = String(type).trim().replace(/^['"]|['"]$/g, '');
    return ['int', 'float', 'bool', 'str'].includes(name) ? name : 'any';
  }

  // The default as written in the cell, as the input's starting value where it reads plainly.
  function startingValue(kind, text) {
    const value = String(text).trim();
    if (kind === 'int' || kind === 'float') {
      return value !== '' && Number.isFinite(Number(value)) ? value : '';
    }
    if (kind === 'str') {
      const quoted = /^(['"])([^'"\\]*)\1$/.exec(value);
      return quoted ? quoted[2] : '';
    }
    return '';
  }

  function parameterField(parameter) {
    const kind = kindOf(parameter.type);
    let input;
    if (kind === 'bool') {
      input = el('input', { type: 'checkbox', checked: String(parameter.default).trim() === 'True' });
    } else if (kind === 'int' || kind === 'float') {
      input = el('input', { type: 'number', step: kind === 'int' ? '1' : 'any' });
      input.value = startingValue(kind, parameter.default);
    } else {
      input = el('input', { type: 'text', placeholder: kind === 'any' ? 'a JSON value, or text' : '' });
      input.value = startingValue(kind, parameter.default);
    }
    input.name = parameter.name;
    input.dataset.kind = kind;
    input.classList.add('parameter');
    // Only values the user changed are sent: the others keep the notebook's own defaults.
    input.addEventListener(kind === 'bool' ? 'change' : 'input', () => { input.dataset.changed = 'yes'; });
    const label = el('label', { className: kind === 'bool' ? 'field field-check' : 'field' }, [
      el('span', { className: 'field-name' }, [
        parameter.name,
        ' ',
        el('span', { className: 'type', textContent: parameter.type === 'None' ? 'any type' : parameter.type }),
      ]),
      input,
    ]);
    const notes = [`default ${parameter.default}`];
    if (parameter.help) {
      notes.push(parameter.help);
    }
    label.append(el('span', { className: 'hint', textContent: notes.join(' · ') }));
    return label;
  }

  function buildParameters(parameters) {
    $('parameters').replaceChildren(...parameters.map(parameterField));
    $('no-parameters').hidden = parameters.length > 0;
  }

  function parameterValue(input) {
    const { kind } = input.dataset;
    const raw = input.value;
    if (kind === 'bool') {
      return input.checked;
    }
    if (kind === 'int' || kind === 'float') {
      const number = Number(raw);
      if (raw.trim() === '' || !Number.isFinite(number) || (kind === 'int' && !Number.isInteger(number))) {
        throw new ApiError(`Parameter ${input.name} must be ${kind === 'int' ? 'a whole number' : 'a number'}`);
      }
      return number;
    }
    if (kind === 'any') {
      try {
        return JSON.parse(raw); // as papermill's -p: JSON where it parses, else text
      } catch (error) {
        return raw;
      }
    }
    return raw;
  }

  function chosenParameters() {
    const values = {};
    for (const input of $('parameters').querySelectorAll('input.parameter')) {
      if (input.dataset.changed === 'yes') {
        values[input.name] = parameterValue(input);
      }
    }
    return values;
  }

  async function runNotebook() {
    const body = { nbkIds: [state.notebookId], module: 'notebooks' };
    const parameters = chosenParameters();
    if (Object.keys(parameters).length > 0) {
      body.parameters = parameters;
    }
    const timeout = $('run-timeout').value.trim();
    if (timeout !== '') {
      body.timeout = Number(timeout);
    }
    const started = await api('POST', 'notebooks/_run', body);
    await loadRuns();
    await showRun(started.runs[0].run_id);
  }

  // --- Schedule -------------------------------------------------------------------

  function timeZones() {
    const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
    return Array.from(new Set(['UTC', ...zones])).sort();
  }

  function fillTimeZones() {
    const here = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
    $('schedule-timezone').replaceChildren(...timeZones().map((zone) => el('option', { value: zone, textContent: zone })));
    selectTimeZone(here);
  }

  function selectTimeZone(zone) {
    const select = $('schedule-timezone');
    if (!Array.from(select.options).some((option) => option.value === zone)) {
      select.append(el('option', { value: zone, textContent: zone }));
    }
    select.value = zone;
  }

  function fillScheduleForm(schedule) {
    $('schedule-form').reset();
    if (schedule && schedule.until) {
      $('schedule-until').value = schedule.until.replace(' ', 'T');
      $('schedule-time').value = schedule.time || '';
      $('schedule-period').value = schedule.period ? capitalised(schedule.period) : '';
      selectTimeZone(schedule.timezone || 'UTC');
    } else {
      selectTimeZone(Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC');
    }
  }

  function capitalised(word) {
    return word.charAt(0).toUpperCase() + word.slice(1).toLowerCase();
  }

  async function schedule() {
    const until = $('schedule-until').value;
    if (!until) {
      throw new ApiError('Until is required');
    }
    const body = { nbk_ids: [state.notebookId], until: until.replace('T', ' ').slice(0, 16) };
    if ($('schedule-time').value) {
      body.time = $('schedule-time').value.slice(0, 5);
    }
    if ($('schedule-period').value) {
      body.period = $('schedule-period').value;
    }
    body.timezone = $('schedule-timezone').value;
    await api('POST', 'notebooks/_schedule', body);
    showMessage('Scheduled', 'info');
    await Promise.all([refreshNotebook(), refreshList()]);
  }

  async function unschedule() {
    await api('POST', 'notebooks/_unschedule', { nbk_ids: [state.notebookId] });
    showMessage('Unscheduled', 'info');
    await Promise.all([refreshNotebook(), refreshList()]);
  }

  async function deleteNotebook() {
    const name = $('detail-name').textContent;
    if (!window.confirm(`Delete ${name} and its schedule?`)) {
      return;
    }
    await api('DELETE', 'notebooks', { nbk_ids: [state.notebookId] });
    state.notebookId = null;
    stopPolling();
    state.runId = null;
    $('detail').hidden = true;
    $('run').hidden = true;
    showMessage(`Deleted ${name}`, 'info');
    await refreshList();
  }

  // --- Runs -----------------------------------------------------------------------

  async function loadRuns() {
    const notebookId = state.notebookId;
    const runs = await api('GET', `notebooks/${encodeURIComponent(notebookId)}/runs?limit=${RUNS_SHOWN}`);
    if (notebookId !== state.notebookId) {
      return;
    }
    $('runs').tBodies[0].replaceChildren(...runs.map(runRow));
    $('no-runs').hidden = runs.length > 0;
    $('runs').hidden = runs.length === 0;
  }

  function runRow(run) {
    const open = el('button', { type: 'button', className: 'secondary small', textContent: 'Open' });
    open.addEventListener('click', () => act(open, () => showRun(run.run_id)));
    const parameters = Object.keys(run.parameters || {}).length ? JSON.stringify(run.parameters) : '—';
    const row = el('tr', {}, [
      el('td', {}, [badge(el('span'), run.status)]),
      el('td', { textContent: run.trigger }),
      el('td', { textContent: formatTime(run.created_at) }),
      el('td', { textContent: formatDuration(run) }),
      el('td', { className: 'parameters-cell', textContent: parameters, title: parameters }),
      el('td', {}, [open]),
    ]);
    row.dataset.runId = run.run_id;
    row.classList.toggle('selected', run.run_id === state.runId);
    return row;
  }

  // The runs table's row of `run`, if shown, brought up to date.
  function updateRunRow(run) {
    for (const row of $('runs').tBodies[0].rows) {
      if (row.dataset.runId === run.run_id) {
        row.replaceWith(runRow(run));
      }
    }
  }

  function runPath(runId, suffix = '') {
    return `runs/${encodeURIComponent(runId)}${suffix}`;
  }

  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  async function showRun(runId) {
    stopPolling();
    state.runId = runId;
    $('run-id').textContent = runId;
    // Nothing of the run shown before stays beside the new id: its status and buttons
    // come with the new run's first look.
    badge($('run-status'), '');
    $('run-meta').textContent = '';
    $('run-progress-text').textContent = '';
    $('cancel-run').hidden = true;
    $('rerun').hidden = true;
    $('run-log').textContent = '';
    $('run-error').hidden = true;
    $('output').hidden = true;
    $('output-frame').removeAttribute('src');
    for (const row of $('runs').tBodies[0].rows) {
      row.classList.toggle('selected', row.dataset.runId === runId);
    }
    $('run').hidden = false;
    // Scrolled before the run is shown, never after: a page that jumps once the run's
    // Cancel shows would put another button (Run, say) under the pointer.
    $('run').scrollIntoView({ block: 'start' });
    await poll(runId, true);
  }

  // One look at the run and its log; again in POLL_MS while it has not ended.
  async function poll(runId, first = false) {
    let run;
    try {
      run = await api('GET', runPath(runId));
      if (runId !== state.runId) {
        return;
      }
      if (FINAL.has(run.status) && !first) {
        // The run ended while we watched: the notebook's run count and lists changed.
        // They are redrawn before the end shows, so nothing above the run moves once
        // its Rerun button is there to click.
        await Promise.all([loadRuns(), refreshNotebook(), loadNotebooks()]);
        if (runId !== state.runId) {
          return;
        }
      }
      renderRun(run);
      await loadLog(runId);
    } catch (error) {
      if (runId === state.runId) {
        showMessage(error.message);
      }
    }
    if (runId !== state.runId) {
      return;
    }
    if (run && FINAL.has(run.status)) {
      showOutput(run);
      return;
    }
    state.pollTimer = setTimeout(() => poll(runId), POLL_MS);
  }

  function renderRun(run) {
    badge($('run-status'), run.status);
    const meta = [`${run.trigger} run`, `created ${formatTime(run.created_at)}`];
    if (typeof run.started_at === 'number') {
      meta.push(`started ${formatTime(run.started_at)}`);
    }
    if (typeof run.finished_at === 'number') {
      meta.push(`finished ${formatTime(run.finished_at)} (${formatDuration(run)})`);
    }
    if (run.engine) {
      meta.push(`on ${run.engine}`);
    }
    if (Object.keys(run.parameters || {}).length) {
      meta.push(`parameters ${JSON.stringify(run.parameters)}`);
    }
    $('run-meta').textContent = meta.join(' · ');
    const { done, total } = run.progress || { done: 0, total: 0 };
    const bar = $('run-progress');
    const parts = [];
    if (total > 0) {
      bar.max = total;
      bar.value = done;
      parts.push(`${done} / ${total} cells`);
    } else if (FINAL.has(run.status)) {
      bar.value = 0;
    } else {
      bar.removeAttribute('value'); // not counted yet: an indeterminate bar
    }
    if (typeof run.current_cell === 'number') {
      parts.push(`executing cell ${run.current_cell}`);
    }
    $('run-progress-text').textContent = parts.join(' · ');
    updateRunRow(run);
    if (run.error) {
      const cell = typeof run.error.cell_index === 'number' ? `Cell ${run.error.cell_index}: ` : '';
      $('run-error').textContent = `${cell}${run.error.ename}: ${run.error.evalue}`;
      $('run-error').hidden = false;
    } else {
      $('run-error').hidden = true;
    }
    const finished = FINAL.has(run.status);
    $('cancel-run').hidden = finished;
    $('rerun').hidden = !finished;
  }

  async function loadLog(runId) {
    // Manual: a log too large for one response is a 303 to storage elsewhere, which a
    // fetch could not read; the link below opens it in a tab instead.
    const { response, data } = await request('GET', runPath(runId, '/log'), undefined, { redirect: 'manual' });
    if (runId !== state.runId) {
      return;
    }
    const log = $('run-log');
    if (response.type === 'opaqueredirect') {
      const link = el('a', { href: new URL(runPath(runId, '/log'), API).href, target: '_blank', rel: 'noopener noreferrer', textContent: 'open it in a new tab' });
      log.replaceChildren('The log is too large to show here: ', link);
      return;
    }
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    if (log.textContent !== data) {
      log.textContent = data || '(nothing printed yet)';
      if (atBottom) {
        log.scrollTop = log.scrollHeight;
      }
    }
  }

  function showOutput(run) {
    if (typeof run.started_at !== 'number') {
      return; // never started: there is no executed notebook
    }
    const url = new URL(runPath(run.run_id, '/output'), API);
    url.searchParams.set('format', 'html');
    $('output-link').href = url.href;
    if ($('output-frame').getAttribute('src') !== url.href) {
      $('output-frame').src = url.href;
    }
    $('output').hidden = false;
  }

  async function cancelRun() {
    const runId = state.runId;
    await api('POST', runPath(runId, '/cancel'));
    if (runId === state.runId) {
      await showRun(runId);
      await loadRuns();
    }
  }

  async function rerun() {
    const started = await api('POST', runPath(state.runId, '/rerun'), {});
    await loadRuns();
    await showRun(started.runs[0].run_id);
  }

  // --- Start ----------------------------------------------------------------------

  // `handler` on `type` events of element `id`, its button disabled while it works.
  function on(id, type, handler) {
    const element = $(id);
    const isForm = element.tagName === 'FORM';
    element.addEventListener(type, (event) => {
      if (isForm) {
        event.preventDefault(); // the page does the request: no navigation
      }
      act(isForm ? element.querySelector('button[type=submit]') : element, handler);
    });
  }

  function start() {
    $('user').textContent = document.querySelector('meta[name="notebooks-user"]').content;
    $('message-close').addEventListener('click', () => { $('message').hidden = true; });
    on('upload-form', 'submit', upload);
    on('more-notebooks', 'click', () => loadNotebooks(true));
    on('run-form', 'submit', runNotebook);
    on('schedule-form', 'submit', schedule);
    on('unschedule-button', 'click', unschedule);
    on('delete-notebook', 'click', deleteNotebook);
    on('cancel-run', 'click', cancelRun);
    on('rerun', 'click', rerun);
    fillTimeZones();
    act(null, refreshList);
  }

  start();
})();
