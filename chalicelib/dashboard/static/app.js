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
  // notebookId: the notebook shown; opening: the one last asked for (an earlier click's
  // slower answer is dropped); runId: the run shown.
  // pollGeneration: counts the polling loops started; only the latest one goes on.
  const state = { notebookId: null, notebookName: '', opening: null, runId: null, pollTimer: null, pollGeneration: 0, nextToken: null };
  // Each scheduled notebook's schedule as Fetch describes it (List's has no time zone), by
  // notebook id: { key: its until, time and period, text }. A redraw of the list reads
  // with Fetch only the rows whose schedule is not known or changed.
  const zones = new Map();

  // --- HTTP -----------------------------------------------------------------------

  // A failure to show as the page's message; `status`: the API's, when it answered one.
  class ApiError extends Error {
    constructor(message, status = null) {
      super(message);
      this.status = status;
    }
  }

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
      throw new ApiError(message, data && data.error && data.error.status ? data.error.status : response.status);
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

  // List's `schedule` has no `timezone` (the seed's three fields): the zone shows where
  // the page has Fetch's. Fetch's null zone is a schedule made before zones existed.
  function describeSchedule(schedule) {
    if (!schedule || !schedule.until) {
      return 'Not scheduled';
    }
    const day = schedule.period ? `${capitalised(schedule.period)}s` : 'Every day';
    let zone = '';
    if (schedule.timezone) {
      zone = ` (${schedule.timezone})`;
    } else if ('timezone' in schedule) {
      zone = ' (time zone not recorded)';
    }
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

  // Runs `work` with `buttons` (one, a list, or none) disabled, so that a double click
  // sends one request; any failure becomes the page's message.
  async function act(buttons, work) {
    const controls = [].concat(buttons || []);
    for (const control of controls) {
      control.disabled = true;
    }
    $('message').hidden = true; // what an earlier action said no longer applies
    try {
      await work();
    } catch (error) {
      showMessage(error instanceof ApiError ? error.message : `Unexpected error: ${error.message}`);
    } finally {
      for (const control of controls) {
        control.disabled = false;
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
    const scheduleCell = el('td', { textContent: describeSchedule(notebook.schedule) });
    if (notebook.status === 'Scheduled') {
      const known = zones.get(notebook.notebook_id);
      if (known && known.key === scheduleKey(notebook)) {
        scheduleCell.textContent = known.text;
      } else {
        scheduleCell.textContent = describeSchedule({ ...notebook.schedule, timezone: '…' }); // until Fetch says
        showZone(scheduleCell, notebook.notebook_id);
      }
    }
    const row = el('tr', {}, [
      el('td', {}, [name]),
      el('td', {}, [badge(el('span'), notebook.status)]),
      scheduleCell,
      el('td', { className: 'number', textContent: String(notebook.no_of_runs) }),
      el('td', { textContent: typeof notebook.last_run === 'number' ? formatTime(notebook.last_run) : 'never' }),
    ]);
    row.dataset.notebookId = notebook.notebook_id;
    row.classList.toggle('selected', notebook.notebook_id === state.notebookId);
    return row;
  }

  // What List and Fetch both say of a notebook's schedule, and when the notebook last
  // changed: a schedule changed elsewhere, its zone alone included, changes the key.
  function scheduleKey(notebook) {
    const { until = null, time = null, period = null } = notebook.schedule || {};
    return JSON.stringify([notebook.updated_at, until, time, period]);
  }

  // `notebook` (Fetch's answer) remembered for the list's schedule column.
  function rememberZone(notebook) {
    if (notebook.schedule && notebook.schedule.until) {
      zones.set(notebook.notebook_id, { key: scheduleKey(notebook), text: describeSchedule(notebook.schedule) });
    } else {
      zones.delete(notebook.notebook_id);
    }
  }

  // `cell` describes the notebook's schedule from Fetch, which has its time zone (List's
  // has not): one request a scheduled notebook whose schedule the page does not know.
  async function showZone(cell, notebookId) {
    try {
      const notebook = await api('GET', `notebooks/${encodeURIComponent(notebookId)}`);
      rememberZone(notebook);
      cell.textContent = describeSchedule(notebook.schedule);
    } catch (error) {
      cell.append(' (time zone not known: open the notebook)');
    }
  }

  // The next page ("Show more"), or the list again from the start: as many rows as shown
  // (the API's 1,000 at most), so a refresh does not take away the pages the user opened.
  async function loadNotebooks(more = false) {
    const body = $('notebooks').tBodies[0];
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (more && state.nextToken) {
      query.set('next_token', state.nextToken);
    } else {
      query.set('limit', String(Math.min(1000, Math.max(PAGE_SIZE, body.rows.length))));
    }
    const { response, data } = await request('GET', `notebooks/_all?${query}`);
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
    state.opening = notebookId;
    const [notebook, declared] = await Promise.all([
      api('GET', `notebooks/${encodeURIComponent(notebookId)}`),
      api('GET', `notebooks/${encodeURIComponent(notebookId)}/parameters`),
    ]);
    if (state.opening !== notebookId) {
      return; // another notebook was clicked since: that one is shown
    }
    rememberZone(notebook);
    const changed = state.notebookId !== notebookId;
    state.notebookId = notebookId;
    for (const row of $('notebooks').tBodies[0].rows) {
      row.classList.toggle('selected', row.dataset.notebookId === notebookId);
    }
    showNotebook(notebook);
    if (changed) {
      // Nothing typed for the notebook shown before stays in the forms.
      $('run-form').reset();
      buildParameters($('run-parameters'), declared.parameters);
      fillScheduleForm(notebook.schedule, declared.parameters);
      stopPolling(); // the run shown was another notebook's
      state.runId = null;
      $('run').hidden = true;
      // Nor its runs: until this one's are loaded, none can be opened under its name.
      $('runs').tBodies[0].replaceChildren();
      $('runs').hidden = true;
      $('no-runs').hidden = true;
    }
    await loadRuns();
    if (state.notebookId !== notebookId) {
      return; // another notebook was opened meanwhile: its page stays
    }
    $('detail').hidden = false;
    if (changed) {
      $('detail').scrollIntoView({ block: 'start' });
    }
  }

  function showNotebook(notebook) {
    state.notebookName = notebook.notebook_name;
    $('detail-name').textContent = notebook.notebook_name;
    badge($('detail-status'), notebook.status);
    $('detail-meta').textContent =
      `Created ${formatTime(notebook.created_at)} by ${notebook.created_by} · updated ${formatTime(notebook.updated_at)}` +
      ` · ${notebook.no_of_runs} run${notebook.no_of_runs === 1 ? '' : 's'} · id ${notebook.notebook_id}`;
    const schedule = notebook.schedule || {};
    let text = describeSchedule(schedule);
    if (typeof schedule.next_run === 'number') {
      text += ` · next run ${formatTime(schedule.next_run)} (your time)`;
    }
    $('schedule-current').textContent = text;
    const scheduled = notebook.status === 'Scheduled';
    $('schedule-current-parameters').textContent = scheduled ? `Parameters: ${formatParameters(schedule.parameters)}` : '';
    $('schedule-current-parameters').hidden = !scheduled;
    // Hidden, not disabled: a button's disabled state is act()'s, while it works.
    $('unschedule-button').hidden = !scheduled;
  }

  async function refreshNotebook() {
    const notebookId = state.notebookId;
    if (notebookId) {
      const notebook = await api('GET', `notebooks/${encodeURIComponent(notebookId)}`);
      rememberZone(notebook);
      if (notebookId === state.notebookId) { // else another notebook was opened meanwhile
        showNotebook(notebook);
      }
    }
  }

  // --- Parameters (one builder for the run form and the schedule form) -----------------

  // The annotations of a string that may be None: the API checks these as such.
  const OPTIONAL_STR = new Set(['Optional[str]', 'Union[str,None]', 'Union[None,str]']);

  // The field for a declared type: int, float, bool, str (text as written, `Optional[str]`
  // included), or any (read as papermill's -p reads a value: see parameterValue).
  function kindOf(type) {
    const name = typeName(type);
    if (OPTIONAL_STR.has(name)) {
      return 'str';
    }
    return ['int', 'float', 'bool', 'str'].includes(name) ? name : 'any';
  }

  // A declared type as the page compares it: unquoted, without spaces.
  function typeName(type) {
    return String(type).trim().replace(/^['"]|['"]$/g, '').replace(/\s+/g, '');
  }

  // Papermill's -p reads these words as Python's constants before anything else.
  const PYTHON_CONSTANTS = new Map([['True', true], ['False', false], ['None', null]]);

  // Whether `text` is read as something other than text by an `any` field.
  function readsAsValue(text) {
    if (PYTHON_CONSTANTS.has(text)) {
      return true;
    }
    try {
      JSON.parse(text);
      return true;
    } catch (error) {
      return false;
    }
  }

  // What a field of `kind` holds to send `value` again (`nullable`: a str field that
  // sends None for the word None).
  function fieldText(kind, value, nullable) {
    if (kind === 'bool') {
      return value ? 'true' : 'false';
    }
    if (kind === 'str' && nullable && value === null) {
      return 'None';
    }
    if (typeof value === 'string' && (kind === 'str' || !readsAsValue(value))) {
      return value;
    }
    return JSON.stringify(value);
  }

  // A field for one declared parameter. An empty field (for bool: "default") is not sent,
  // so the notebook's own default applies: it is shown as the placeholder, as written.
  function parameterField(parameter, value) {
    const kind = kindOf(parameter.type);
    const written = String(parameter.default);
    // The API takes null for an Optional[str], and for a parameter whose default is None.
    const nullable = OPTIONAL_STR.has(typeName(parameter.type)) || (kind === 'str' && written === 'None');
    let input;
    if (kind === 'bool') {
      input = el('select', {}, [
        el('option', { value: '', textContent: `default (${written})` }),
        el('option', { value: 'true', textContent: 'True' }),
        el('option', { value: 'false', textContent: 'False' }),
      ]);
    } else if (kind === 'int' || kind === 'float') {
      input = el('input', { type: 'number', step: kind === 'int' ? '1' : 'any', placeholder: written });
    } else {
      const hint = { any: ' (True, False, None, a JSON value, or text)', str: nullable ? ' (text, or None)' : '' }[kind];
      input = el('input', { type: 'text', placeholder: `${written}${hint}` });
    }
    input.name = parameter.name;
    input.dataset.kind = kind;
    input.dataset.nullable = nullable ? 'true' : '';
    input.classList.add('parameter');
    if (value !== undefined) {
      input.value = fieldText(kind, value, nullable);
    }
    input.addEventListener('input', () => input.removeAttribute('aria-invalid'));
    const notes = [`default ${written}`];
    if (parameter.help) {
      notes.push(parameter.help);
    }
    return el('label', { className: 'field' }, [
      el('span', { className: 'field-name' }, [
        parameter.name,
        ' ',
        el('span', { className: 'type', textContent: parameter.type === 'None' ? 'any type' : parameter.type }),
      ]),
      input,
      el('span', { className: 'hint', textContent: notes.join(' · ') }),
    ]);
  }

  // `container` filled with a field for each declared parameter, holding `values` where given.
  function buildParameters(container, declared, values = {}) {
    if (declared.length === 0) {
      container.replaceChildren(el('p', { className: 'hint' }, [
        'This notebook declares no parameters (no cell tagged ', el('code', { textContent: 'parameters' }), ').',
      ]));
      return;
    }
    container.replaceChildren(
      el('p', { className: 'hint', textContent: "An empty field is not sent: the notebook's default applies." }),
      ...declared.map((parameter) => parameterField(parameter, values[parameter.name])),
    );
  }

  // The page's message for a field whose value cannot be sent, the field marked and focused.
  function invalid(input, message) {
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return new ApiError(message);
  }

  // A number field's value: undefined when empty (not given). The forms do not use the
  // browser's validation (novalidate), which blocks a submit with no message on the page.
  function numberValue(input, label, whole) {
    const raw = input.value.trim();
    if (raw === '' && !input.validity.badInput) {
      return undefined;
    }
    const number = Number(raw);
    if (raw === '' || !Number.isFinite(number) || (whole && !Number.isSafeInteger(number))) {
      throw invalid(input, `${label} must be ${whole ? 'a whole number' : 'a number'}${raw ? `, not ${raw}` : ''}`);
    }
    return number;
  }

  // A parameter field's value: undefined when empty (not given).
  function parameterValue(input) {
    const { kind } = input.dataset;
    if (kind === 'int' || kind === 'float') {
      return numberValue(input, `Parameter ${input.name}`, kind === 'int');
    }
    const raw = input.value;
    if (raw === '') {
      return undefined;
    }
    if (kind === 'bool') {
      return raw === 'true';
    }
    if (kind === 'str') {
      return raw === 'None' && input.dataset.nullable ? null : raw; // text as written
    }
    // As papermill's -p: True, False and None as Python's, then JSON where it parses, else text.
    if (PYTHON_CONSTANTS.has(raw)) {
      return PYTHON_CONSTANTS.get(raw);
    }
    return readsAsValue(raw) ? JSON.parse(raw) : raw;
  }

  // The values given in `container`'s fields, by name.
  function chosenParameters(container) {
    const values = {};
    for (const input of container.querySelectorAll('.parameter')) {
      const value = parameterValue(input);
      if (value !== undefined) {
        values[input.name] = value;
      }
    }
    return values;
  }

  function formatParameters(values) {
    const entries = Object.entries(values || {});
    return entries.length ? entries.map(([name, value]) => `${name}=${JSON.stringify(value)}`).join(', ') : '—';
  }

  async function runNotebook() {
    const notebookId = state.notebookId;
    const body = { nbkIds: [notebookId], module: 'notebooks' };
    const parameters = chosenParameters($('run-parameters'));
    if (Object.keys(parameters).length > 0) {
      body.parameters = parameters;
    }
    const timeout = numberValue($('run-timeout'), 'Timeout', true);
    if (timeout !== undefined) {
      body.timeout = timeout;
    }
    const started = await api('POST', 'notebooks/_run', body);
    await showStarted(notebookId, started.runs[0].run_id);
  }

  // The run just started of `notebookId`, unless another notebook was opened meanwhile
  // (its page stays).
  async function showStarted(notebookId, runId) {
    if (notebookId !== state.notebookId) {
      return;
    }
    await loadRuns();
    if (notebookId === state.notebookId) {
      await showRun(runId);
    }
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

  // The schedule form for `schedule` (Fetch's), or a new one when not scheduled: Schedule
  // replaces the whole schedule, so the form starts from what the current one has,
  // its parameters included.
  function fillScheduleForm(schedule, declared) {
    $('schedule-form').reset();
    const scheduled = Boolean(schedule && schedule.until);
    const values = (scheduled && schedule.parameters) || {};
    buildParameters($('schedule-parameters'), declared, values);
    const names = new Set(declared.map((parameter) => parameter.name));
    const dropped = Object.keys(values).filter((name) => !names.has(name));
    $('schedule-dropped').textContent = dropped.length
      ? `The schedule also passes ${dropped.join(', ')}, which the notebook no longer declares: scheduling again leaves ${dropped.length === 1 ? 'it' : 'them'} out.`
      : '';
    $('schedule-dropped').hidden = dropped.length === 0;
    if (scheduled) {
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
    const notebookId = state.notebookId;
    const until = $('schedule-until').value;
    if (!until) {
      throw invalid($('schedule-until'), 'Until needs a date and a time');
    }
    // Schedule sets the whole schedule: the parameters are always sent, {} for none.
    const body = {
      nbk_ids: [notebookId],
      until: until.replace('T', ' ').slice(0, 16),
      timezone: $('schedule-timezone').value,
      parameters: chosenParameters($('schedule-parameters')),
    };
    if ($('schedule-time').value) {
      body.time = $('schedule-time').value.slice(0, 5);
    }
    if ($('schedule-period').value) {
      body.period = $('schedule-period').value;
    }
    await api('POST', 'notebooks/_schedule', body);
    showMessage('Scheduled', 'info');
    await scheduleChanged(notebookId);
  }

  async function unschedule() {
    const notebookId = state.notebookId;
    await api('POST', 'notebooks/_unschedule', { nbk_ids: [notebookId] });
    showMessage('Unscheduled', 'info');
    await scheduleChanged(notebookId);
  }

  // The page after `notebookId`'s schedule changed: its zone read again (the same until,
  // time and period may have another zone), by the notebook's Fetch when it is open, before
  // the list is drawn, so that the list has it without a request of its own.
  async function scheduleChanged(notebookId) {
    zones.delete(notebookId);
    await refreshNotebook();
    await refreshList();
  }

  async function deleteNotebook() {
    const { notebookId, notebookName: name } = state;
    if (!window.confirm(`Delete ${name} and its schedule?`)) {
      return;
    }
    await api('DELETE', 'notebooks', { nbk_ids: [notebookId] });
    zones.delete(notebookId);
    showMessage(`Deleted ${name}`, 'info');
    if (notebookId === state.notebookId) {
      state.notebookId = null;
      stopPolling();
      state.runId = null;
      $('detail').hidden = true;
      $('run').hidden = true;
    }
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
    const parameters = formatParameters(run.parameters);
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

  // Ends the polling loop: its timer, and a look at the run under way, whose answer then
  // sets no new timer.
  function stopPolling() {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
    state.pollGeneration += 1;
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
    await poll(runId, state.pollGeneration, true);
  }

  // One look at the run and its log; again in POLL_MS while it has not ended, unless
  // another loop was started since (`generation` is no longer the latest).
  async function poll(runId, generation, first = false) {
    const current = () => generation === state.pollGeneration && runId === state.runId;
    let run;
    let refreshFailure = null;
    try {
      run = await api('GET', runPath(runId));
      if (!current()) {
        return;
      }
      if (FINAL.has(run.status) && !first) {
        // The run ended while we watched: the notebook's run count and lists changed.
        // They are redrawn before the end shows, so nothing above the run moves once
        // its Rerun button is there to click; their failure does not hide the end.
        const redrawn = await Promise.allSettled([loadRuns(), refreshNotebook(), loadNotebooks()]);
        const failed = redrawn.find((outcome) => outcome.status === 'rejected');
        refreshFailure = failed ? failed.reason : null;
        if (!current()) {
          return;
        }
      }
      renderRun(run);
      await loadLog(runId);
    } catch (error) {
      if (current()) {
        showMessage(error.message);
      }
      if (error.status === 404) {
        return; // the run is gone (its notebook deleted elsewhere): nothing more to watch
      }
    }
    if (!current()) {
      return;
    }
    if (refreshFailure) {
      showMessage(refreshFailure.message);
    }
    if (run && FINAL.has(run.status)) {
      showOutput(run);
      return;
    }
    state.pollTimer = setTimeout(() => poll(runId, generation), POLL_MS);
  }

  function renderRun(run) {
    badge($('run-status'), run.status);
    // The runs shown are the open notebook's: its name says whose run this is.
    const meta = [`${run.trigger} run of ${state.notebookName}`, `created ${formatTime(run.created_at)}`];
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
      meta.push(`parameters ${formatParameters(run.parameters)}`);
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
    const { notebookId, runId } = state;
    const started = await api('POST', runPath(runId, '/rerun'), {});
    await showStarted(notebookId, started.runs[0].run_id);
  }

  // --- Start ----------------------------------------------------------------------

  // `handler` on `type` events of element `id`, its buttons (a form's: all of them)
  // disabled while it works.
  function on(id, type, handler) {
    const element = $(id);
    const isForm = element.tagName === 'FORM';
    element.addEventListener(type, (event) => {
      if (isForm) {
        event.preventDefault(); // the page does the request: no navigation
      }
      act(isForm ? Array.from(element.querySelectorAll('button')) : element, handler);
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
