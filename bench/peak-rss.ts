/**
 * Preloaded into a bench's child (`node --import peak-rss.mjs child.mjs`, bundled): at exit it
 * writes the process's peak RSS (the kernel's own high-water mark, every thread included) to
 * PEAK_RSS_FILE, so the bench reads the true peak instead of sampling it and missing a spike.
 */
import { writeFileSync } from 'node:fs';

const file = process.env.PEAK_RSS_FILE;
if (file) process.on('exit', () => writeFileSync(file, JSON.stringify({ peakRssBytes: process.resourceUsage().maxRSS * 1024 })));
