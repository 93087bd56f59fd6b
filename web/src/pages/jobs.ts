import { Job, post, get, Snapshot, Task } from '../api';
import { duration, error, field, h, input, remember } from '../dom';
import type { Page } from '../main';

function progress(done: number, total: number) {
  const pct = total ? (100 * done) / total : 0;
  return h('div', { class: 'bar', title: `${done} / ${total}` }, h('div', { style: `width:${pct.toFixed(1)}%` }),
    h('span', {}, `${done} / ${total}`));
}

export function jobsPage(): Page {
  const msg = h('div');
  const body = h('tbody');
  const tasks = h('tbody');
  const detail = h('div', { class: 'detail' });

  const act = (id: number, what: string) => async () => {
    try {
      await post(`/api/jobs/${id}/${what}`);
      msg.replaceChildren();
    } catch (e) {
      error(msg, e);
    }
  };
  const show = async (id: number) => {
    try {
      const j = await get<Job>(`/api/jobs/${id}`);
      detail.replaceChildren(h('h3', {}, `Job ${id} log`), h('pre', { class: 'log' }, (j.log ?? []).map((l) => l.line).join('\n')));
    } catch (e) {
      error(detail, e);
    }
  };

  const row = (j: Job) =>
    h('tr', { 'data-job': j.id, 'data-state': j.state },
      h('td', {}, h('a', { href: '#', onclick: (e: Event) => { e.preventDefault(); show(j.id); } }, String(j.id))),
      h('td', {}, j.kind),
      h('td', { class: 'path' }, j.model.repo || j.model.path),
      h('td', { class: `state ${j.state}` }, j.state + (j.active ? ' ⚙' : '')),
      h('td', {}, progress(j.units_done + j.units_failed, j.units_total)),
      h('td', {}, j.rate ? `${j.rate.toFixed(2)}/s` : ''),
      h('td', {}, duration(j.eta_s)),
      h('td', { class: 'actions' },
        ['queued', 'running'].includes(j.state) && h('button', { onclick: act(j.id, 'pause') }, 'Pause'),
        ['paused', 'failed'].includes(j.state) && h('button', { onclick: act(j.id, 'resume') }, 'Resume'),
        !['done', 'cancelled'].includes(j.state) && h('button', { onclick: act(j.id, 'cancel') }, 'Cancel'),
        j.kind === 'measure' && h('a', { href: `#/measurements/${j.id}` }, 'results'),
        j.kind === 'gradual' && h('a', { href: `#/gradual/${j.id}` }, 'results')));

  const taskRow = (t: Task) =>
    h('tr', { 'data-task': t.id },
      h('td', {}, String(t.id)), h('td', {}, t.kind), h('td', { class: `state ${t.state}` }, t.state),
      h('td', {}, progress(Math.round(t.progress * 100), 100)), h('td', { class: 'path' }, t.error ?? t.message));

  // The start form: a measurement of a model folder.
  const model = input('model', '', { placeholder: '/path/to/hf-model-folder or ORG/NAME[@REV] on the Hub', size: 50 });
  // Sent once to the server, which keeps it in a 0600 file and never returns it;
  // the field is cleared after, and never remembered by the page.
  const hfToken = input('hf_token', '', { type: 'password', size: 30, autocomplete: 'off', placeholder: 'hf_… (optional, for gated or private models)' });
  const hfStored = h('span', { class: 'muted', id: 'hf-token-state' });
  const tokenState = async () => {
    try {
      const r = await get<{ stored: boolean }>('/api/hf-token');
      hfStored.textContent = r.stored ? ' a token is stored on the server' : ' no token stored';
    } catch {
      hfStored.textContent = '';
    }
  };
  tokenState();
  const text = input('text', '', { placeholder: 'calibration text', size: 50 });
  const evalText = input('eval', '', { placeholder: 'eval text (default: the calibration text)', size: 50 });
  const types = input('types', 'Q8_0,Q6_K,Q5_K,Q4_K,IQ4_XS,Q3_K,Q2_K', { size: 50 });
  const level = h('select', { name: 'level' }, ...['proxy', 'kld', 'full'].map((l) => h('option', { value: l }, l))) as HTMLSelectElement;
  level.value = 'kld';
  const ctx = input('ctx', '512', { type: 'number', min: 8 });
  const chunks = input('calib_chunks', '16', { type: 'number', min: 1 });
  remember(model, 'model'); remember(text, 'text'); remember(evalText, 'eval'); remember(types, 'types');
  remember(level, 'level'); remember(ctx, 'ctx'); remember(chunks, 'chunks');
  const start = async (e: Event) => {
    e.preventDefault();
    const hub = /^[\w.-]+\/[\w.-]+(@[\w.\/-]+)?$/.test(model.value) && !model.value.startsWith('.');
    msg.replaceChildren(h('p', { class: 'muted' }, hub ? 'starting (fetching the model from the Hub if it is not cached, then loading it)…' : 'starting (loading the model)…'));
    try {
      if (hfToken.value) {
        await post('/api/hf-token', { token: hfToken.value });
        hfToken.value = '';
        await tokenState();
      }
      const r = await post<{ job: number }>('/api/measure', {
        model: model.value, text: text.value, eval: evalText.value || undefined, types: types.value,
        level: level.value, ctx: Number(ctx.value), calib_chunks: Number(chunks.value),
      });
      msg.replaceChildren(h('p', { class: 'ok' }, `started job ${r.job}`));
    } catch (err) {
      error(msg, err);
    }
  };
  const form = h('form', { class: 'card', onsubmit: start }, h('h3', {}, 'Measure a model'),
    field('Model (folder or Hub id)', model), field('Hugging Face token', h('span', {}, hfToken, hfStored)), field('Calibration text', text), field('Eval text', evalText),
    field('Types', types), field('Level', level), field('Context', ctx), field('Calibration chunks', chunks),
    h('button', { type: 'submit' }, 'Start measurement'));

  const el = h('section', {}, h('h2', {}, 'Jobs'), msg,
    h('table', { class: 'grid', id: 'jobs' },
      h('thead', {}, h('tr', {}, ...['id', 'kind', 'model', 'state', 'progress', 'rate', 'eta', ''].map((t) => h('th', {}, t)))), body),
    detail,
    h('h2', {}, 'Tasks'),
    h('table', { class: 'grid', id: 'tasks' },
      h('thead', {}, h('tr', {}, ...['id', 'kind', 'state', 'progress', 'message'].map((t) => h('th', {}, t)))), tasks),
    form);
  return {
    el,
    onSnapshot: (s: Snapshot) => {
      body.replaceChildren(...(s.jobs.length ? s.jobs.map(row) : [h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'no jobs yet'))]));
      tasks.replaceChildren(...s.tasks.map(taskRow));
    },
  };
}
