-- Users who sign in with email and password (cookie sessions). Users who come
-- with a Supabase access token need no row here.

create table if not exists public.app_users (
    id            uuid        primary key default gen_random_uuid(),
    email         text        not null,
    password_hash text        not null,
    business_id   text        not null,
    created_at    timestamptz not null default now(),
    constraint app_users_email_lowercase check (email = lower(email))
);

create unique index if not exists app_users_email_key on public.app_users (email);

-- Server-only: RLS on with no policies, so anon/authenticated keys see nothing
-- (password hashes must never be readable through Supabase's APIs).
alter table public.app_users enable row level security;
