-- LangGraph's checkpoint tables are created by its PostgresSaver.setup(),
-- which the server runs before these migrations. They hold every message, so
-- on Supabase they must not be readable through the anon/authenticated keys:
-- RLS on, no policies. Skipped for tables that do not exist yet.

do $$
declare
    t text;
begin
    foreach t in array array['checkpoints', 'checkpoint_blobs', 'checkpoint_writes', 'checkpoint_migrations'] loop
        if to_regclass('public.' || t) is not null then
            execute format('alter table public.%I enable row level security', t);
        end if;
    end loop;
end;
$$;
