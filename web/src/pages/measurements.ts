import { Chart, registerables } from 'chart.js';
import { get, Job, post, Snapshot } from '../api';
import { error, field, h, input, jobOptions, layerKind } from '../dom';
import type { Page } from '../main';

Chart.register(...registerables);

interface Cell {
  cost: number;
  bpw: number;
  source: string;
  applicable?: boolean;
}
interface Row {
  tensor: string;
  types: Record<string, Cell>;
}

const palette = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563'];

// Colour of a ΔKL on a log scale between the smallest and largest shown.
function heat(v: number, lo: number, hi: number): string {
  if (!(v > 0)) return '#f3f4f6';
  const t = hi > lo ? (Math.log(v) - Math.log(lo)) / (Math.log(hi) - Math.log(lo)) : 0.5;
  const x = Math.min(1, Math.max(0, t));
  return `hsl(${(1 - x) * 220}, 80%, ${85 - 40 * x}%)`;
}

// Knees come from a plan of this measurement (they do not depend on the
// budget, so a budget that holds everything will do when there is no current
// plan); the current plan, if it was made from this job, adds its types.
async function planMarks(job: number, info: any): Promise<Record<string, { type?: string; knee: string }>> {
  let current: any = null;
  try {
    current = JSON.parse(sessionStorage.getItem('tailor-plan') ?? 'null');
  } catch {
    current = null;
  }
  if (current?.job === job) return current.tensors;
  if (info?.state !== 'done') return {};
  try {
    const r = await post<any>('/api/plan', { model: info.model.path, job, target_bpw: 32 });
    return Object.fromEntries(r.strategy.tensors.map((x: any) => [x.name, { knee: x.knee ?? '' }]));
  } catch {
    return {};  // e.g. the model changed since: the curves still show
  }
}

export function measurementsPage(arg: string): Page {
  const pick = h('select', { name: 'job' }) as HTMLSelectElement;
  const out = h('div');
  let chart: Chart | null = null;
  let rows: Row[] = [];
  // Per tensor: its knee (from the planner's find_knee) and the type the
  // current plan chose, when the Plan page planned from this measurement.
  let marks: Record<string, { type?: string; knee: string }> = {};
  const marksNote = h('p', { class: 'muted', id: 'curve-marks' });
  let jobsSeen = '';

  const filter = input('tensors', '', { placeholder: 'tensors to plot (regex), e.g. blk\\.0\\.', size: 30 });
  const canvas = h('canvas', { id: 'curve' }) as HTMLCanvasElement;
  const typeSel = h('select', { name: 'heat-type' }) as HTMLSelectElement;
  const heatBox = h('div', { class: 'heatmap' });

  const drawCurves = () => {
    let re: RegExp;
    try {
      re = new RegExp(filter.value || '.', 'i');
    } catch {
      re = /./;
    }
    const chosen = rows.filter((r) => re.test(r.tensor)).slice(0, 8);
    const datasets = chosen.map((r, i) => ({
      label: r.tensor,
      data: Object.values(r.types).filter((c) => c.applicable !== false && c.cost > 0)
        .map((c) => ({ x: c.bpw, y: c.cost })).sort((a, b) => a.x - b.x),
      borderColor: palette[i % palette.length],
      backgroundColor: palette[i % palette.length],
      showLine: true,
    }));
    const point = (r: Row, t: string | undefined) => {
      const c = t ? r.types[t] : undefined;
      return c && c.applicable !== false && c.cost > 0 ? { x: c.bpw, y: c.cost } : null;
    };
    const markSet = (label: string, style: string, pick: (r: Row) => string | undefined) => {
      const pts = chosen.map((r, i) => ({ p: point(r, pick(r)), i })).filter((x) => x.p);
      return { label, data: pts.map((x) => x.p!), pointStyle: style, pointRadius: 9, pointHoverRadius: 11,
        borderColor: '#111827', borderWidth: 2, backgroundColor: pts.map((x) => palette[x.i % palette.length]), showLine: false };
    };
    const knees = markSet('knee', 'triangle', (r) => marks[r.tensor]?.knee || undefined);
    const planned = markSet('current plan', 'rectRot', (r) => marks[r.tensor]?.type);
    if (knees.data.length) datasets.push(knees as any);
    if (planned.data.length) datasets.push(planned as any);
    canvas.dataset.shown = String(chosen.length);
    canvas.dataset.knees = String(knees.data.length);
    canvas.dataset.planned = String(planned.data.length);
    marksNote.textContent = `▲ knee (${knees.data.length} of ${chosen.length} shown tensors have one)` +
      (planned.data.length ? ` · ◆ type of the current plan` : ' · no current plan from this measurement (make one on the Plan page)');
    chart?.destroy();
    chart = new Chart(canvas, {
      type: 'scatter',
      data: { datasets },
      options: {
        animation: false,
        scales: {
          x: { title: { display: true, text: 'bits per weight' } },
          y: { type: 'logarithmic', title: { display: true, text: 'ΔKL (nats)' } },
        },
      },
    });
  };

  const drawHeat = () => {
    const type = typeSel.value;
    const layers = new Set<number>();
    const kinds: string[] = [];
    const val = new Map<string, number>();
    for (const r of rows) {
      const [layer, kind] = layerKind(r.tensor);
      if (layer === null) continue;
      layers.add(layer);
      if (!kinds.includes(kind)) kinds.push(kind);
      const c = r.types[type];
      if (c && c.applicable !== false) val.set(`${layer}|${kind}`, c.cost);
    }
    const vs = [...val.values()].filter((v) => v > 0);
    const lo = Math.min(...vs), hi = Math.max(...vs);
    const ls = [...layers].sort((a, b) => a - b);
    heatBox.replaceChildren(h('table', { class: 'heat' },
      h('thead', {}, h('tr', {}, h('th', {}, 'layer'), ...kinds.map((k) => h('th', {}, k)))),
      h('tbody', {}, ...ls.map((l) => h('tr', {}, h('th', {}, String(l)), ...kinds.map((k) => {
        const v = val.get(`${l}|${k}`);
        return h('td', { style: `background:${heat(v ?? 0, lo, hi)}`, title: v === undefined ? 'n/a' : `${k} layer ${l}: ${v.toExponential(3)}` },
          v === undefined ? '' : v.toExponential(1));
      }))))));
  };

  filter.addEventListener('input', drawCurves);
  typeSel.addEventListener('change', drawHeat);

  const load = async () => {
    if (!pick.value) return;
    out.replaceChildren(h('p', { class: 'muted' }, 'loading…'));
    try {
      const r = await get<any>(`/api/jobs/${pick.value}/results`);
      rows = r.summary.tensors;
      marks = await planMarks(Number(pick.value), r.job);
      const types = [...new Set(rows.flatMap((x) => Object.keys(x.types)))];
      typeSel.replaceChildren(...types.map((t) => h('option', { value: t }, t)));
      const c = r.summary.counts;
      out.replaceChildren(
        h('p', {}, `${rows.length} tensors · ${r.job.state} · measured ${c.measured}, predicted ${c.predicted}, proxy ${c.proxy}, pending ${c.pending}`),
        h('h3', {}, 'ΔKL against bits per weight'), field('Tensors', filter), h('div', { class: 'chart' }, canvas), marksNote,
        h('h3', {}, 'Heatmap: layers × tensor kinds'), field('Type', typeSel), heatBox);
      drawCurves();
      drawHeat();
    } catch (e) {
      error(out, e);
    }
  };
  pick.addEventListener('change', load);

  const el = h('section', {}, h('h2', {}, 'Measurements'), field('Measurement job', pick), out);
  return {
    el,
    onSnapshot: (s: Snapshot) => {
      const ms = s.jobs.filter((j: Job) => j.kind === 'measure');
      const key = ms.map((j) => `${j.id}:${j.state}`).join(',');
      if (key === jobsSeen) return;
      jobsSeen = key;
      const keep = pick.value || arg;
      pick.replaceChildren(...jobOptions(ms));
      if (keep && ms.some((j) => String(j.id) === keep)) {
        const changed = pick.value !== keep;
        pick.value = keep;
        if (changed || !rows.length) load();
      }
    },
    dispose: () => chart?.destroy(),
  };
}
