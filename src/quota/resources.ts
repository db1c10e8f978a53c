import { z } from 'zod';

/**
 * The resource names Glance itself registers in Keystone unified limits
 * (glance/quota/keystone.py), so an operator's existing limits apply unchanged.
 */
export const USAGE_RESOURCES = ['image_count_total', 'image_count_uploading', 'image_size_total', 'image_stage_total'] as const;

export const UsageResource = z.enum(USAGE_RESOURCES);
export type UsageResource = z.infer<typeof UsageResource>;

/** Ours, not Glance's: stops create/delete churn that the count limit alone never sees. */
export const CREATE_RATE = 'image_create_rate' as const;

export const Resource = z.enum([...USAGE_RESOURCES, CREATE_RATE]);
export type Resource = z.infer<typeof Resource>;

/** Usage of one project, in Glance's units: counts, and sizes in whole MiB (floored). */
export type Usage = Record<UsageResource, number>;
