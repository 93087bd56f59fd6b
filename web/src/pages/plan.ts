import { get, post, q, Snapshot } from '../api';
import { bytes, error, field, h, input, remember } from '../dom';
import type { Page } from '../main';

// A budget slider that re-plans as it moves; rules override types; the
// result saves as a strategy file (YAML or JSON by extension) and loads back.
export function planPage(): Page {
  const model = input('model', '', { size: 50, placeholder: 'model folder (measured)' });
  const job = h('select', { name: 'job' }, h('option', { value: '' }, 'newest finished measurement')) as HTMLSelectElement;
  const bpw = input('bpw', '4.5', { type: 'range', min: 2, max: 8.5, step: 0.05 });
  const bpwLabel = h('span', { class: 'num' }, '');
  // The budget is one of: bits per weight (slider), a file size, or a quality
  // bound (max ΔKL, max perplexity increase) that the smallest plan must meet.
  const kind = h('select', { name: 'budget-kind' },
    h('option', { value: 'bpw' }, 'bits per weight'), h('option', { value: 'size' }, 'size (MB)'),
    h('option', { value: 'kld' }, 'max ΔKL'), h('option', { value: 'ppl' }, 'max PPL increase (%)')) as HTMLSelectElement;
  const sizeMb = input('size_mb', '', { type: 'number', min: 0.001, step: 'any', size: 10, placeholder: 'MB' });
  const maxKld = input('max_kld', '0.01', { type: 'number', min: 0, step: 'any', size: 10 });
  const maxPpl = input('max_ppl_increase', '1', { type: 'number', min: 0, step: 'any', size: 10 });
  const budgetBoxes: Record<string, HTMLElement> = {
    bpw: h('span', {}, bpw, bpwLabel), size: h('span', {}, sizeMb, ' MB (10⁶ bytes)'),
    kld: h('span', {}, maxKld, ' nats'), ppl: h('span', {}, maxPpl, ' % (as ΔKL ≤ ln(1 + p/100))'),
  };
  const budget = (): Record<string, number> => {
    if (kind.value === 'size') return { target_bytes: Math.round(Number(sizeMb.value) * 1e6) };
    if (kind.value === 'kld') return { max_kld: Number(maxKld.value) };
    if (kind.value === 'ppl') return { max_ppl_increase: Number(maxPpl.value) };
    return { target_bpw: Number(bpw.value) };
  };
  const showKind = () => {
    for (const [k, box] of Object.entries(budgetBoxes)) box.style.display = k === kind.value ? '' : 'none';
  };
  const rules = h('textarea', { name: 'rules', rows: 3, cols: 50, placeholder: 'one rule a line: output.weight=Q8_0, attn_v>=Q5_K' }) as HTMLTextAreaElement;
  const savePath = input('save', '', { size: 50, placeholder: 'strategy.yaml or .json (in an allowed folder)' });
  remember(model, 'model'); remember(bpw, 'bpw'); remember(kind, 'budget-kind'); remember(sizeMb, 'size-mb');
  remember(maxKld, 'max-kld'); remember(maxPpl, 'max-ppl'); remember(rules, 'rules'); remember(savePath, 'strategy');
  const summary = h('div', { class: 'card', id: 'plan-summary' });
  const table = h('div');
  const msg = h('div');
  let strategy: any = null;
  let measuredTypes: string[] = [];
  let lastJobs: any[] = [];

  // The types the chosen measurement covers (a pin must be one of them, or F16).
  const typesFor = () => {
    const done = lastJobs.filter((j) => j.kind === 'measure' && j.state === 'done');
    const j = done.find((x) => String(x.id) === job.value) ?? done[done.length - 1];
    measuredTypes = [...(j?.settings?.types ?? []), 'F16'];
  };
  const pin = (name: string, type: string) => {
    const esc = name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const kept = rules.value.split('\n').map((x) => x.trim()).filter((x) => x && !x.startsWith(`${esc}=`));
    rules.value = [...kept, `${esc}=${type}`].join('\n');
    localStorage.setItem('tailor-rules', rules.value);
    replan();
  };
  const typeCell = (x: any) => {
    if (!measuredTypes.includes(x.type)) return h('td', {}, x.type + (x.pinned ? ' 📌' : ''));
    const sel = h('select', { 'data-tensor': x.name, onchange: (e: Event) => pin(x.name, (e.target as HTMLSelectElement).value) },
      ...measuredTypes.map((t) => h('option', { value: t }, t))) as HTMLSelectElement;
    sel.value = x.type;
    return h('td', {}, sel, x.pinned ? ' 📌' : '');
  };
  let seq = 0;
  let timer = 0;

  const show = (s: any) => {
    strategy = s;
    const t = s.totals;
    summary.replaceChildren(h('p', { 'data-bytes': t.bytes, 'data-cost': t.cost }, `${s.tensors.length} tensors · ${bytes(t.bytes)} · ${t.bpw.toFixed(3)} bits per weight · predicted ΔKL ${t.cost.toExponential(3)}`));
    table.replaceChildren(h('table', { class: 'grid' },
      h('thead', {}, h('tr', {}, ...['tensor', 'type', 'bpw', 'ΔKL', 'knee', 'reason'].map((x) => h('th', {}, x)))),
      h('tbody', {}, ...s.tensors.map((x: any) => h('tr', {}, h('td', {}, x.name),
        typeCell(x), h('td', { class: 'num' }, Number(x.bpw).toFixed(2)),
        h('td', { class: 'num' }, Number(x.cost).toExponential(2)), h('td', {}, x.knee ?? ''), h('td', { class: 'muted' }, x.reason ?? ''))))));
  };

  const replan = async () => {
    bpwLabel.textContent = `${Number(bpw.value).toFixed(2)} bpw`;
    if (!model.value) return;
    if (kind.value === 'size' && !(Number(sizeMb.value) > 0)) return;
    const mine = ++seq;
    try {
      const r = await post<any>('/api/plan', {
        model: model.value, job: job.value ? Number(job.value) : undefined, ...budget(),
        rules: rules.value.split('\n').map((x) => x.trim()).filter(Boolean),
      });
      if (mine !== seq) return;  // a newer request is on its way
      msg.replaceChildren();
      show(r.strategy);
      // The current plan, for the Measurements page to mark its choices (this tab only).
      sessionStorage.setItem('tailor-plan', JSON.stringify({ job: r.job,
        tensors: Object.fromEntries(r.strategy.tensors.map((x: any) => [x.name, { type: x.type, knee: x.knee ?? '' }])) }));
    } catch (e) {
      if (mine === seq) error(msg, e);
    }
  };
  const soon = () => {
    clearTimeout(timer);
    bpwLabel.textContent = `${Number(bpw.value).toFixed(2)} bpw`;
    timer = window.setTimeout(replan, 150);
  };
  bpw.addEventListener('input', soon);
  for (const x of [sizeMb, maxKld, maxPpl]) x.addEventListener('input', soon);
  kind.addEventListener('change', () => {
    showKind();
    // Start a size budget from the current plan's size, so the switch changes nothing at first.
    if (kind.value === 'size' && !(Number(sizeMb.value) > 0) && strategy)
      sizeMb.value = (strategy.totals.bytes / 1e6).toFixed(1);
    replan();
  });
  rules.addEventListener('change', replan);
  model.addEventListener('change', replan);
  job.addEventListener('change', () => {
    typesFor();
    replan();
  });

  const save = async () => {
    if (!strategy) return error(msg, 'plan first');
    try {
      const r = await post<any>('/api/strategy', { path: savePath.value, strategy });
      msg.replaceChildren(h('p', { class: 'ok' }, `saved ${r.saved}`));
    } catch (e) {
      error(msg, e);
    }
  };
  const load = async () => {
    try {
      const r = await get<any>(`/api/strategy?path=${q(savePath.value)}`);
      show(r.strategy);
      msg.replaceChildren(h('p', { class: 'ok' }, `loaded ${r.path}`));
    } catch (e) {
      error(msg, e);
    }
  };

  const el = h('section', {}, h('h2', {}, 'Plan'),
    h('div', { class: 'card' }, field('Model', model), field('Measurement', job),
      field('Budget', h('span', {}, kind, ' ', ...Object.values(budgetBoxes))), field('Rules', rules),
      field('Strategy file', savePath), h('button', { onclick: save }, 'Save'), h('button', { onclick: load }, 'Load')),
    msg, summary, table);
  showKind();
  replan();
  let seen = '';
  return {
    el,
    onSnapshot: (s: Snapshot) => {
      lastJobs = s.jobs;
      const had = measuredTypes.length;
      typesFor();
      if (!had && measuredTypes.length > 1 && strategy) show(strategy);
      const done = s.jobs.filter((j) => j.kind === 'measure' && j.state === 'done');
      const key = done.map((j) => j.id).join(',');
      if (key === seen) return;
      seen = key;
      const keep = job.value;
      job.replaceChildren(h('option', { value: '' }, 'newest finished measurement'),
        ...done.map((j) => h('option', { value: String(j.id) }, `#${j.id} ${j.model.path}`)));
      job.value = keep;
    },
  };
}
