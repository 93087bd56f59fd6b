// A few DOM helpers so the pages read as what they show.
import type { Job } from './api';

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else if (k === 'value') (el as any).value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

export function field(label: string, input: HTMLElement): HTMLElement {
  return h('label', { class: 'field' }, h('span', {}, label), input);
}

export function input(name: string, value = '', attrs: Attrs = {}): HTMLInputElement {
  return h('input', { name, value, ...attrs }) as HTMLInputElement;
}

export function error(el: HTMLElement, e: unknown) {
  el.replaceChildren(h('p', { class: 'error' }, e instanceof Error ? e.message : String(e)));
}

export function bytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) (n /= 1024), i++;
  return `${n.toFixed(i ? 2 : 0)} ${u[i]}`;
}

export function duration(s: number | null): string {
  if (s === null || !isFinite(s)) return '';
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// The layer and kind of a tensor name: "blk.3.attn_q.weight" -> [3, "attn_q"].
export function layerKind(name: string): [number | null, string] {
  const m = name.match(/(?:^|\.)(?:blk|layers|h)\.(\d+)\.(.+?)(?:\.weight)?$/);
  if (m) return [Number(m[1]), m[2].replace(/^(self_attn|mlp)\./, '')];
  return [null, name.replace(/\.weight$/, '')];
}

// Remembers form values across page switches and reloads.
export function remember(el: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement, key: string) {
  const v = localStorage.getItem(`tailor-${key}`);
  if (v !== null) el.value = v;
  el.addEventListener('change', () => localStorage.setItem(`tailor-${key}`, el.value));
}

// The options of a job picker: "— choose —", then "#ID model (state, done/total)".
export function jobOptions(jobs: Job[]): HTMLElement[] {
  return [h('option', { value: '' }, '— choose —'), ...jobs.map((j) => h('option', { value: String(j.id) },
    `#${j.id} ${j.model.path.split('/').pop()} (${j.state}, ${j.units_done}/${j.units_total})`))];
}
