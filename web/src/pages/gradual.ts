import { Chart, registerables } from 'chart.js';
import { get, Job, q, Snapshot, token } from '../api';
import { bytes, error, field, h, jobOptions, layerKind } from '../dom';
import type { Page } from '../main';

Chart.register(...registerables);

// A gradual job (`tailor gradual`): the importance analysis that set each
// block's error budget, then every block's walk down the precision ladder in
// the order it was processed, then the end-to-end validation.

const methods = ['rtn', 'upgrade', 'disable', 'noise'] as const;
type Method = (typeof methods)[number];
const methodLabel: Record<Method, string> = {
  rtn: 'RTN sensitivity', upgrade: 'layer upgrade', disable: 'block disable', noise: 'noise injection',
};
const methodColour: Record<Method, string> = { rtn: '#2563eb', upgrade: '#16a34a', disable: '#d97706', noise: '#7c3aed' };
// The weights of the combined score when a job does not store its own.
const defaultWeights: Record<Method, number> = { rtn: 0.4, upgrade: 0.25, disable: 0.2, noise: 0.15 };

interface Scores extends Record<Method, number> {
  block: number;
  combined: number;
}
interface ImportanceBlock extends Scores {
  gain?: number;
  threshold?: number;
  rtn_kld?: Record<string, number>;
}
interface ImportanceLayer extends Scores {
  name: string;
}
interface BlockResult {
  block: number;
  order?: number;
  types?: Record<string, string>;
  error?: number;
  threshold?: number;
  plain_error?: number;
  trained?: boolean;
  recovered?: string[];
  bits?: number;
  bytes?: number;
  seconds?: number;
  train_steps?: number;
  adaptive?: { predicted?: number; actual?: number; stopped_early?: boolean };
  attempts?: { type: string; plain_error?: number; trained_error?: number; ok?: boolean }[];
}
interface GradualView {
  job: Job;
  importance: { blocks?: ImportanceBlock[]; layers?: ImportanceLayer[]; weights?: Record<string, number>; safety?: number } | null;
  blocks: BlockResult[];
  validate: Record<string, any> | null;
  pending: { key: string; state: string }[];
  other: Record<string, unknown>;
}

// Four significant digits, in exponent form when small or large: the cells
// must show the stored number, not a rounded-away one.
function num(v: number | undefined | null): string {
  if (v === undefined || v === null || !isFinite(v)) return '';
  const a = Math.abs(v);
  return a !== 0 && (a < 0.01 || a >= 1e5) ? v.toExponential(3) : String(Number(v.toPrecision(4)));
}

// White (lowest) to red (highest) on a linear scale.
function heat(v: number, lo: number, hi: number): string {
  const t = hi > lo ? Math.min(1, Math.max(0, (v - lo) / (hi - lo))) : 0.5;
  return `hsl(${20 - 20 * t}, 85%, ${96 - 46 * t}%)`;
}

// A block's types grouped by type, one line each: "Q4_K: attn_q, attn_k".
function typeSummary(types: Record<string, string> = {}): HTMLElement[] {
  const by = new Map<string, string[]>();
  for (const [name, t] of Object.entries(types)) by.set(t, [...(by.get(t) ?? []), layerKind(name)[1]]);
  return [...by].map(([t, kinds]) => h('div', {}, h('b', {}, t), `: ${kinds.join(', ')}`));
}

export function gradualPage(arg: string): Page {
  const pick = h('select', { name: 'gradual-job' }) as HTMLSelectElement;
  const out = h('div');
  const canvas = h('canvas', { id: 'importance-chart' }) as HTMLCanvasElement;
  const heatScore = h('select', { name: 'heat-score' },
    h('option', { value: 'combined' }, 'combined'), ...methods.map((m) => h('option', { value: m }, methodLabel[m]))) as HTMLSelectElement;
  const heatBox = h('div', { class: 'heatmap' });
  let chart: Chart | null = null;
  let view: GradualView | null = null;
  let jobsSeen = '';
  let doneSeen = -1;

  const weightsOf = (v: GradualView): Record<Method, number> => {
    const w = v.importance?.weights ?? {};
    return Object.fromEntries(methods.map((m) => [m, typeof w[m] === 'number' ? w[m] : defaultWeights[m]])) as Record<Method, number>;
  };

  // Stacked bars: each method's weighted score per block; the combined score
  // as a line on the same axis and the block's error budget on its own axis.
  const drawChart = (v: GradualView) => {
    const blocks = [...(v.importance?.blocks ?? [])].sort((a, b) => a.block - b.block);
    const w = weightsOf(v);
    const contrib = Object.fromEntries(methods.map((m) => [m, blocks.map((b) => w[m] * (b[m] ?? 0))]));
    const combined = blocks.map((b) => b.combined);
    const threshold = blocks.map((b) => b.threshold ?? null);
    canvas.dataset.blocks = String(blocks.length);
    canvas.dataset.contrib = JSON.stringify(contrib);
    canvas.dataset.combined = JSON.stringify(combined);
    canvas.dataset.threshold = JSON.stringify(threshold);
    chart?.destroy();
    chart = new Chart(canvas, {
      data: {
        labels: blocks.map((b) => `block ${b.block}`),
        datasets: [
          ...methods.map((m) => ({
            type: 'bar' as const, label: `${methodLabel[m]} × ${w[m]}`, data: contrib[m],
            backgroundColor: methodColour[m], stack: 'score', yAxisID: 'y', order: 2,
          })),
          { type: 'line' as const, label: 'combined score', data: combined, borderColor: '#111827',
            backgroundColor: '#111827', yAxisID: 'y', order: 1, pointRadius: 4 },
          { type: 'line' as const, label: 'error budget (threshold)', data: threshold, borderColor: '#dc2626',
            backgroundColor: '#dc2626', borderDash: [6, 4], yAxisID: 'y1', order: 0, pointStyle: 'rectRot', pointRadius: 5 },
        ],
      },
      options: {
        animation: false,
        scales: {
          x: { stacked: true },
          y: { stacked: true, beginAtZero: true, title: { display: true, text: 'importance (weighted scores)' } },
          y1: { position: 'right', beginAtZero: true, grid: { drawOnChartArea: false },
            title: { display: true, text: 'block output error budget' } },
        },
      },
    });
  };

  // Blocks × layer kinds, coloured by the chosen score.
  const drawHeat = () => {
    const layers = view?.importance?.layers ?? [];
    const score = heatScore.value as Method | 'combined';
    const kinds: string[] = [];
    const rows = new Set<number>();
    const cell = new Map<string, ImportanceLayer>();
    for (const l of layers) {
      const [layer, kind] = layerKind(l.name);
      const b = l.block ?? layer;
      if (b === null || b === undefined) continue;
      if (!kinds.includes(kind)) kinds.push(kind);
      rows.add(b);
      cell.set(`${b}|${kind}`, l);
    }
    const vals = layers.map((l) => l[score]).filter((x) => typeof x === 'number');
    const lo = Math.min(...vals), hi = Math.max(...vals);
    heatBox.replaceChildren(layers.length ? h('table', { class: 'heat', id: 'layer-heat' },
      h('thead', {}, h('tr', {}, h('th', {}, 'block'), ...kinds.map((k) => h('th', {}, k)))),
      h('tbody', {}, ...[...rows].sort((a, b) => a - b).map((b) => h('tr', { 'data-block': b }, h('th', {}, String(b)),
        ...kinds.map((k) => {
          const l = cell.get(`${b}|${k}`);
          if (!l || typeof l[score] !== 'number') return h('td', {}, '');
          return h('td', { 'data-layer': l.name, style: `background:${heat(l[score], lo, hi)}`,
            title: `${l.name}\n` + ['combined', ...methods].map((m) => `${m}: ${num(l[m as Method | 'combined'])}`).join('\n') },
            num(l[score]));
        }))))) : h('p', { class: 'muted' }, 'no per-layer scores'));
  };
  heatScore.addEventListener('change', drawHeat);

  const blockRow = (b: BlockResult, imp: ImportanceBlock | undefined) => {
    const ratio = b.error !== undefined && b.threshold ? b.error / b.threshold : null;
    const a = b.adaptive;
    return h('tr', { 'data-block': b.block },
      h('td', { class: 'num', 'data-col': 'order' }, b.order ?? ''),
      h('td', { class: 'num', 'data-col': 'block' }, b.block),
      h('td', { class: 'num', 'data-col': 'importance' }, num(imp?.combined)),
      h('td', { class: 'types', 'data-col': 'types', title: Object.entries(b.types ?? {}).map(([n, t]) => `${n}: ${t}`).join('\n') },
        ...typeSummary(b.types)),
      h('td', { class: 'num', 'data-col': 'bits' }, b.bits ?? ''),
      h('td', { class: 'num', 'data-col': 'plain_error' }, num(b.plain_error)),
      h('td', { class: `num ${ratio !== null && ratio > 1 ? 'error' : ''}`, 'data-col': 'error' }, num(b.error)),
      h('td', { class: 'num', 'data-col': 'threshold' }, num(b.threshold)),
      h('td', { class: 'num', 'data-col': 'ratio' }, ratio === null ? '' : `${(100 * ratio).toFixed(0)} %`),
      h('td', { 'data-col': 'trained' }, b.trained ? `✓ ${b.train_steps ?? ''} steps` : '—'),
      h('td', { 'data-col': 'recovered' }, (b.recovered ?? []).map((n) => layerKind(n)[1]).join(', ')),
      h('td', { class: 'num', 'data-col': 'bytes' }, b.bytes === undefined ? '' : bytes(b.bytes)),
      h('td', { class: 'num', 'data-col': 'seconds' }, num(b.seconds)),
      h('td', { class: 'num', 'data-col': 'predicted' }, num(a?.predicted)),
      h('td', { class: 'num', 'data-col': 'actual' }, num(a?.actual) + (a?.stopped_early ? ' (stopped early)' : '')),
      h('td', { 'data-col': 'attempts' }, (b.attempts ?? []).length ? h('details', {}, h('summary', {}, `${b.attempts!.length} tried`),
        ...b.attempts!.map((t) => h('div', { class: t.ok ? 'ok' : 'error' },
          `${t.type}: plain ${num(t.plain_error)}, trained ${num(t.trained_error)} ${t.ok ? '✓' : '✗'}`))) : ''));
  };

  const validateCard = (v: Record<string, any>) => {
    const row = (label: string, value: string | Node, key: string) =>
      h('tr', { 'data-key': key }, h('th', {}, label), h('td', { class: 'num' }, value));
    return h('div', { class: 'card', id: 'gradual-validate' }, h('h3', {}, 'Validation (whole model)'),
      h('table', { class: 'grid' }, h('tbody', {},
        row('KL divergence', num(v.kld), 'kld'),
        row('perplexity: base → quantized', `${num(v.ppl_base)} → ${num(v.ppl)}`, 'ppl'),
        row('perplexity increase', typeof v.ppl_increase === 'number' ? `${num(100 * v.ppl_increase)} %` : '', 'ppl_increase'),
        row('size', typeof v.bytes === 'number' ? `${bytes(v.bytes)} (${v.bytes} bytes)` : '', 'bytes'),
        row('target', typeof v.target_bytes === 'number' ? `${bytes(v.target_bytes)} (${v.target_bytes} bytes)` : '—', 'target_bytes'),
        row('bits per weight', num(v.bpw), 'bpw'),
        row('upgraded after trading', (v.upgrades ?? []).join(', ') || '—', 'upgrades'),
        row('output', v.output ? h('a', { href: `/api/download?path=${q(v.output)}&token=${q(token)}`, download: '' }, v.output) : '', 'output'))));
  };

  const render = (v: GradualView) => {
    const imp = new Map((v.importance?.blocks ?? []).map((b) => [b.block, b]));
    const nBlocks = imp.size || v.blocks.length + v.pending.filter((p) => p.key.startsWith('block.')).length;
    const running = v.pending.filter((p) => p.state === 'running').map((p) => p.key);
    const pend = v.pending.filter((p) => p.state !== 'running').map((p) => p.key);
    out.replaceChildren(
      h('p', { id: 'gradual-summary' }, `${v.blocks.length} of ${nBlocks} blocks done · ${v.job.state}` +
        (v.importance?.safety !== undefined ? ` · safety multiplier ${v.importance.safety}` : '') +
        (running.length ? ` · working on ${running.join(', ')}` : '') + (pend.length ? ` · not done: ${pend.join(', ')}` : '')),
      v.validate ? validateCard(v.validate) : h('p', { class: 'muted' }, 'not validated yet'),
      h('h3', {}, 'Block importance'),
      v.importance ? h('div', { class: 'chart' }, canvas) : h('p', { class: 'muted' }, 'the importance analysis has not finished'),
      h('h3', {}, 'Layer importance: blocks × layers'), field('Score', heatScore), heatBox,
      h('h3', {}, 'Blocks in processing order'),
      h('table', { class: 'grid', id: 'gradual-blocks' },
        h('thead', {}, h('tr', {}, ...['order', 'block', 'importance', 'types', 'bits', 'plain error', 'error', 'budget', 'error/budget',
          'trained', 'recovered', 'size', 'seconds', 'adaptive: predicted', 'actual', 'types tried'].map((t) => h('th', {}, t)))),
        h('tbody', {}, ...v.blocks.map((b) => blockRow(b, imp.get(b.block))))),
      Object.keys(v.other).length ? h('details', {}, h('summary', {}, 'other results'),
        h('pre', { class: 'log' }, JSON.stringify(v.other, null, 2))) : '');
    if (v.importance) drawChart(v);
    drawHeat();
  };

  const load = async () => {
    if (!pick.value) return;
    if (!view) out.replaceChildren(h('p', { class: 'muted' }, 'loading…'));
    try {
      view = await get<GradualView>(`/api/gradual/${pick.value}`);
      render(view);
    } catch (e) {
      error(out, e);
    }
  };
  pick.addEventListener('change', () => {
    view = null;
    doneSeen = -1;
    load();
  });

  const el = h('section', {}, h('h2', {}, 'Gradual quantization'), field('Gradual job', pick), out);
  return {
    el,
    onSnapshot: (s: Snapshot) => {
      const gs = s.jobs.filter((j: Job) => j.kind === 'gradual');
      const key = gs.map((j) => `${j.id}:${j.state}`).join(',');
      if (key !== jobsSeen) {
        jobsSeen = key;
        const keep = pick.value || arg;
        pick.replaceChildren(...jobOptions(gs));
        if (keep && gs.some((j) => String(j.id) === keep)) pick.value = keep;
      }
      // A running job: reload when it commits another unit.
      const cur = gs.find((j) => String(j.id) === pick.value);
      if (cur && cur.units_done !== doneSeen) {
        doneSeen = cur.units_done;
        load();
      }
    },
    dispose: () => chart?.destroy(),
  };
}
