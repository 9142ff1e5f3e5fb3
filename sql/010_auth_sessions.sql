-- Cookie sessions the server can end: one row per sign-in, its id carried in
-- the signed cookie. Sign-out revokes the row (a copied cookie stops working
-- at once, on every process); "sign out everywhere" revokes them all; an
-- absolute lifetime and an idle timeout are checked on every request.

create table if not exists public.auth_sessions (
    id            uuid        primary key default gen_random_uuid(),
    user_id       uuid        not null references public.app_users (id) on delete cascade,
    created_at    timestamptz not null default now(),
    last_seen_at  timestamptz not null default now(),
    expires_at    timestamptz not null,
    revoked_at    timestamptz
);

create index if not exists auth_sessions_user_idx on public.auth_sessions (user_id);
create index if not exists auth_sessions_expires_idx on public.auth_sessions (expires_at);

alter table public.auth_sessions enable row level security;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        execute 'revoke all on public.auth_sessions from anon';
    end if;
    if exists (select 1 from pg_roles where rolname = 'authenticated') then
        execute 'revoke all on public.auth_sessions from authenticated';
    end if;
end;
$$;
